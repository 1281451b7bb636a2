"""weighted_knn and accuracy helpers against hand-computed cases."""

import math

import torch

from utils.knn import knn_scores, topk_accuracy, weighted_knn


def test_weighted_knn_hand_computed_votes():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[2.0, 0.0]])  # normalised inside to [1, 0]
    # k=3: sims 1 (class 0), 0.8 (class 1), 0 (class 1); T = 0.1
    scores = knn_scores(train, labels, query, num_classes=3, k=3, temperature=0.1)
    expected = torch.tensor([[math.exp(10), math.exp(8) + math.exp(0), 0.0]])
    assert torch.allclose(scores, expected, rtol=1e-5)
    assert weighted_knn(train, labels, query, 3, k=3).tolist() == [0]


def test_weighted_knn_many_weak_votes_beat_one_strong_only_at_high_temperature():
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8], [0.6, 0.8]])
    labels = torch.tensor([0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    assert weighted_knn(train, labels, query, 2, k=4, temperature=0.05).item() == 0
    assert weighted_knn(train, labels, query, 2, k=4, temperature=10.0).item() == 1


def test_chunking_does_not_change_the_result():
    torch.manual_seed(0)
    train, labels, test = torch.randn(300, 8), torch.randint(0, 5, (300,)), torch.randn(70, 8)
    full = knn_scores(train, labels, test, 5, k=20, chunk_size=1000)
    chunked = knn_scores(train, labels, test, 5, k=20, chunk_size=16)
    assert torch.allclose(full, chunked)


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    acc1, acc5 = topk_accuracy(scores, labels, ks=(1, 2))
    assert abs(acc1 - 100 / 3) < 1e-4 and abs(acc5 - 200 / 3) < 1e-4
