"""The original's ResNet-18 / CIFAR-10 training setup (PAPERS.md#deep-nets-setup), shared by the
paper configs that run on it: batch 128, 200 epochs, lr 0.1 piecewise (/10 at 50% and 75%), SGD with
momentum 0.9, L2 5e-4. Not a config itself (the leading underscore hides it from ``--config``)."""

RESNET18_CIFAR10 = dict(
    dataset="cifar10",
    model="resnet18",
    batch_size=128,
    epochs=200,
    lr_max=0.1,
    lr_schedule="piecewise",
    momentum=0.9,
    l2_reg=5e-4,
)
