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


def brute_force_knn(train, labels, test, num_classes, k, temperature):
    """The definition written out, one query at a time: sort all similarities, vote."""
    train = train / train.norm(dim=1, keepdim=True)
    predictions = []
    for query in test / test.norm(dim=1, keepdim=True):
        sims = (train @ query).tolist()
        nearest = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in nearest:
            votes[int(labels[i])] += math.exp(sims[i] / temperature)
        predictions.append(max(range(num_classes), key=votes.__getitem__))
    return predictions


def test_weighted_knn_matches_brute_force_on_random_features():
    torch.manual_seed(1)
    # unstructured features: predictions hinge on which k rows vote and with what weight
    train, labels, test = torch.randn(400, 16), torch.randint(0, 6, (400,)), torch.randn(90, 16)
    for k, temperature in ((1, 0.1), (15, 0.05), (50, 0.5)):
        expected = brute_force_knn(train, labels, test, 6, k, temperature)
        scores = knn_scores(train, labels, test, 6, k, temperature, chunk_size=32)
        assert scores.argmax(dim=1).tolist() == expected, (k, temperature)
        assert weighted_knn(train, labels, test, 6, k, temperature).tolist() == expected


def test_toy_clusters_have_known_neighbours():
    # two tight clusters on the axes, a third class far away; each query sits inside one cluster
    train = torch.tensor([[1.0, 0.05, 0], [1.0, -0.05, 0], [0.05, 1.0, 0], [-0.05, 1.0, 0]])
    train = torch.cat([train, torch.tensor([[0.0, 0.0, 1.0]])])
    labels = torch.tensor([0, 0, 1, 1, 2])
    queries = torch.tensor([[3.0, 0.1, 0.0], [0.2, 5.0, 0.0], [0.1, 0.0, 2.0]])
    assert weighted_knn(train, labels, queries, 3, k=2).tolist() == [0, 1, 2]
    # k larger than the bank is capped: every training row votes, the nearest still win
    assert weighted_knn(train, labels, queries, 3, k=100).tolist() == [0, 1, 2]


def test_feature_loader_batches_like_a_shuffled_data_loader():
    from argparse import Namespace

    from torch.utils.data import TensorDataset

    from utils.knn import FeatureLoader
    from utils.run import make_loader, seed_epoch

    features, labels = torch.randn(103, 4), torch.arange(103)
    fast = FeatureLoader(features, labels, batch_size=10, shuffle=True, seed=5)
    assert len(fast) == 10  # the last partial batch is dropped when shuffling
    args = Namespace(batch_size=10, limit=None, seed=5, num_workers=0)
    data = TensorDataset(features, labels)
    slow = make_loader(data, torch.device("cpu"), True, 10, args.seed, args.num_workers)
    for epoch in range(2):
        seed_epoch(fast, epoch)
        seed_epoch(slow, epoch)
        fast_batches = [y.tolist() for _, y in fast]
        assert fast_batches == [y.tolist() for _, y in slow]
        assert len({i for b in fast_batches for i in b}) == 100  # no repeats within an epoch
    # resuming part-way: the remaining batches of the same epoch, nothing else
    seed_epoch(slow, 1, skip_batches=3)
    assert [y.tolist() for _, y in slow] == fast_batches[3:]
    ordered = FeatureLoader(features, labels, batch_size=10, shuffle=False)
    assert len(ordered) == 11 and torch.equal(torch.cat([y for _, y in ordered]), labels)
