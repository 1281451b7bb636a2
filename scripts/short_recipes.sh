# shellcheck shell=bash
# Per-method flags of the short CPU runs (scripts/methods.sh, scripts/cifar10_cpu.sh), sourced by
# both. They shorten the papers' recipes so that a CPU shows learning in minutes; each is listed
# in the generated table. SimSiam uses its paper's optimizer (SGD with weight decay), with which it
# does not fall below its initialisation in short runs, unlike with Adam.
declare -A FLAGS=(
    [simclr]="--temperature 0.2"
    [supcon]=""
    [simsiam]="--optimizer sgd --base_lr 0.1 --weight_decay 5e-4"
    [byol]="--ema_momentum 0.99 --proj_hidden_dim 512 --pred_hidden_dim 512"
    [swav]="--num_prototypes 100 --num_crops 2"
    [barlowtwins]="--proj_hidden_dim 512 --proj_dim 512"
    [vicreg]="--proj_hidden_dim 512 --proj_dim 512"
    [mocov2]="--queue_size 4096 --ema_momentum 0.99 --proj_hidden_dim 512"
    [mocov3]="--proj_hidden_dim 512 --pred_hidden_dim 512"
    [nnclr]="--queue_size 4096 --proj_hidden_dim 512 --pred_hidden_dim 512"
    [dino]="--num_prototypes 1024 --num_crops 2 --proj_hidden_dim 512 --ema_momentum 0.99 --teacher_temp_warmup_epochs 2"
)
ALL_METHODS=(simclr supcon simsiam byol swav barlowtwins vicreg mocov2 mocov3 nnclr dino)
