"""Per-layer descriptions of the models in Coral's published Edge TPU benchmark table.

Each builder returns a list of ``nasflow.edgetpu.Layer`` for one int8 image, written from the
models' published definitions (cited per builder), and :data:`PUBLISHED` holds Coral's numbers.

Published latencies
-------------------
"Table 1. Time per inference, in milliseconds (ms)" of https://coral.ai/docs/edgetpu/benchmarks/
(the same figures for these models appear in the earlier copy at
https://coral.withgoogle.com/docs/edgetpu/benchmarks). Coral's notes: the figures are the time
to execute the model only (no input pre-processing), measured with C++ benchmarks; all models
are the TensorFlow Lite int8 versions, trained on ImageNet (1,000 classes). Columns:

* ``desktop_cpu``: desktop CPU alone;
* ``usb3``: the same desktop CPU + USB Accelerator (USB 3.0) with Edge TPU;
* ``embedded_cpu``: embedded CPU alone;
* ``devboard``: Coral Dev Board with Edge TPU.

The page marks DenseNet, ResNet-50 and the EfficientNet-EdgeTPU rows with asterisks; for the
EfficientNet-EdgeTPU rows the CPU-only numbers are visibly unrepresentative (5431 ms on the
desktop CPU vs 705 ms on the embedded one), so CPU columns are only used from the fit set.

Fidelity of the descriptions
----------------------------
MobileNet v1/v2, VGG and the EfficientNet-EdgeTPU definitions are unambiguous. Inception v1
follows TF-slim (which uses 3x3 instead of 5x5 kernels in the third branch). The ResNets follow
the Keras definitions (V1: stride on the first 1x1 of a stage; V2: pre-activation, stride on the
last unit's 3x3) at the 299x299 input of the table; Coral does not say which implementation it
converted, so their MACs are uncertain by a few percent. DenseNet is DenseNet-121 (Keras).
"""

from __future__ import annotations

from collections.abc import Callable

from nasflow.edgetpu import Layer, Net

SOURCE_URL = "https://coral.ai/docs/edgetpu/benchmarks/"
SOURCE_NOTE = (
    "Coral, 'Edge TPU performance benchmarks', Table 1 'Time per inference, in milliseconds'; "
    "int8 TFLite models, model execution only, C++ benchmark; columns: desktop CPU, desktop CPU + USB "
    "Accelerator (USB 3.0), embedded CPU, Dev Board"
)

# model -> (desktop_cpu, usb3, embedded_cpu, devboard) in ms, as printed in Table 1.
_TABLE: dict[str, tuple[float, float, float, float]] = {
    "mobilenet_v1_1.0_224": (53, 2.4, 164, 2.4),
    "mobilenet_v2_1.0_224": (51, 2.6, 122, 2.6),
    "inception_v1_224": (90, 3.4, 392, 4.1),
    "resnet50_v1_299": (484, 49, 1763, 56),
    "resnet50_v2_299": (557, 50, 1875, 59),
    "resnet152_v2_299": (1823, 128, 5499, 151),
    "vgg16_224": (867, 296, 4595, 343),
    "vgg19_224": (1060, 308, 5538, 357),
    "densenet121_224": (380, 20, 1032, 25),
    "efficientnet_edgetpu_s_224": (5431, 5.1, 705, 5.5),
    "efficientnet_edgetpu_m_240": (8469, 8.7, 1081, 10.6),
}
COLUMNS = ("desktop_cpu", "usb3", "embedded_cpu", "devboard")
PUBLISHED: dict[str, dict[str, float]] = {name: dict(zip(COLUMNS, row)) for name, row in _TABLE.items()}
TABLE_NAMES = {
    "mobilenet_v1_1.0_224": "MobileNet v1 (224x224)",
    "mobilenet_v2_1.0_224": "MobileNet v2 (224x224)",
    "inception_v1_224": "Inception v1 (224x224)",
    "resnet50_v1_299": "ResNet-50 V1 (299x299)",
    "resnet50_v2_299": "ResNet-50 V2 (299x299)",
    "resnet152_v2_299": "ResNet-152 V2 (299x299)",
    "vgg16_224": "VGG16 (224x224)",
    "vgg19_224": "VGG19 (224x224)",
    "densenet121_224": "DenseNet (224x224)",
    "efficientnet_edgetpu_s_224": "EfficientNet-EdgeTpu-S",
    "efficientnet_edgetpu_m_240": "EfficientNet-EdgeTpu-M",
}
CPU_COLUMN = {"usb3": "desktop_cpu", "devboard": "embedded_cpu"}


# ---------------------------------------------------------------- MobileNets


def mobilenet_v1(width: float = 1.0, size: int = 224, classes: int = 1001) -> list[Layer]:
    """MobileNet v1 (Howard et al. 2017, Table 1): 3x3 s2 stem, 13 depthwise-separable pairs, ReLU6."""
    net = Net(3, size)
    net.conv(int(32 * width), 3, 2, act="relu6", name="stem")
    for i, (out, stride) in enumerate(
        [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    ):
        net.depthwise(3, stride, act="relu6", name=f"dw{i}")
        net.conv(int(out * width), 1, act="relu6", name=f"pw{i}")
    net.global_pool()
    net.conv(classes, 1, act=None, name="logits")  # slim: 1x1 conv logits
    net.act("softmax", name="softmax")
    return net.layers


def mobilenet_v2(size: int = 224, classes: int = 1001) -> list[Layer]:
    """MobileNet v2 (Sandler et al. 2018, Table 2): inverted residuals (t, c, n, s), ReLU6."""
    net = Net(3, size)
    net.conv(32, 3, 2, act="relu6", name="stem")
    index = 0
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    for t, c, n, s in settings:
        for i in range(n):
            stride = s if i == 0 else 1
            cin = net.c
            branch = net.fork()
            if t != 1:
                branch.conv(cin * t, 1, act="relu6", name=f"b{index}.expand")
            branch.depthwise(3, stride, act="relu6", name=f"b{index}.dw")
            branch.conv(c, 1, act=None, name=f"b{index}.project")
            if stride == 1 and cin == c:
                net.add_residual(branch, name=f"b{index}.add")
            else:
                net.extend(branch)
            index += 1
    net.conv(1280, 1, act="relu6", name="head")
    net.global_pool()
    net.conv(classes, 1, act=None, name="logits")
    net.act("softmax", name="softmax")
    return net.layers


# ---------------------------------------------------------------- Inception v1


def inception_v1(size: int = 224, classes: int = 1001) -> list[Layer]:
    """Inception v1 / GoogLeNet as in TF-slim ``inception_v1`` (BN, 3x3 kernels in branch 2)."""
    net = Net(3, size)
    net.conv(64, 7, 2, name="Conv2d_1a_7x7").pool(3, 2, name="MaxPool_2a_3x3")
    net.conv(64, 1, name="Conv2d_2b_1x1").conv(192, 3, name="Conv2d_2c_3x3").pool(3, 2, name="MaxPool_3a_3x3")

    def mixed(name: str, b0: int, b1: tuple[int, int], b2: tuple[int, int], b3: int) -> None:
        br0 = net.fork().conv(b0, 1, name=f"{name}.b0")
        br1 = net.fork().conv(b1[0], 1, name=f"{name}.b1a").conv(b1[1], 3, name=f"{name}.b1b")
        br2 = net.fork().conv(b2[0], 1, name=f"{name}.b2a").conv(b2[1], 3, name=f"{name}.b2b")
        br3 = net.fork().pool(3, 1, name=f"{name}.b3pool").conv(b3, 1, name=f"{name}.b3")
        net.concat([br0, br1, br2, br3], name=f"{name}.concat")

    mixed("Mixed_3b", 64, (96, 128), (16, 32), 32)
    mixed("Mixed_3c", 128, (128, 192), (32, 96), 64)
    net.pool(3, 2, name="MaxPool_4a_3x3")
    mixed("Mixed_4b", 192, (96, 208), (16, 48), 64)
    mixed("Mixed_4c", 160, (112, 224), (24, 64), 64)
    mixed("Mixed_4d", 128, (128, 256), (24, 64), 64)
    mixed("Mixed_4e", 112, (144, 288), (32, 64), 64)
    mixed("Mixed_4f", 256, (160, 320), (32, 128), 128)
    net.pool(2, 2, name="MaxPool_5a_2x2")
    mixed("Mixed_5b", 256, (160, 320), (32, 128), 128)
    mixed("Mixed_5c", 384, (192, 384), (48, 128), 128)
    net.global_pool()
    net.conv(classes, 1, act=None, name="logits")
    net.act("softmax", name="softmax")
    return net.layers


# ---------------------------------------------------------------- ResNets


def resnet_v1(depths: tuple[int, ...] = (3, 4, 6, 3), size: int = 299, classes: int = 1000) -> list[Layer]:
    """ResNet V1 with bottlenecks (He et al. 2016; Keras ``ResNet50``: stride on the first 1x1)."""
    net = Net(3, size)
    net.conv(64, 7, 2, name="conv1").pool(3, 2, name="pool1")
    for stage, (blocks, width) in enumerate(zip(depths, (64, 128, 256, 512))):
        for i in range(blocks):
            stride = 2 if (i == 0 and stage > 0) else 1
            name = f"s{stage}b{i}"
            main = net.fork()
            main.conv(width, 1, stride, name=f"{name}.a").conv(width, 3, name=f"{name}.b")
            main.conv(4 * width, 1, act=None, name=f"{name}.c")
            if i == 0:
                shortcut = net.fork().conv(4 * width, 1, stride, act=None, name=f"{name}.proj")
                net.add_projected(main, shortcut, act="relu", name=f"{name}.add")
            else:
                net.add_residual(main, act="relu", name=f"{name}.add")
    net.global_pool()
    net.fc(classes, name="fc")
    net.act("softmax", name="softmax")
    return net.layers


def resnet_v2(depths: tuple[int, ...] = (3, 4, 6, 3), size: int = 299, classes: int = 1000) -> list[Layer]:
    """ResNet V2 (He et al. 2016b; Keras ``ResNet50V2``): pre-activation, stride on the last unit's 3x3.

    The pre-activation BatchNorm + ReLU of each unit cannot be folded into a convolution and is
    an elementwise multiply-add op.
    """
    net = Net(3, size)
    net.conv(64, 7, 2, act=None, name="conv1").pool(3, 2, name="pool1")
    for stage, (blocks, width) in enumerate(zip(depths, (64, 128, 256, 512))):
        for i in range(blocks):
            stride = 2 if (i == blocks - 1 and stage < len(depths) - 1) else 1
            name = f"s{stage}b{i}"
            net.affine(name=f"{name}.preact")
            main = net.fork()
            main.conv(width, 1, name=f"{name}.a").conv(width, 3, stride, name=f"{name}.b")
            main.conv(4 * width, 1, act=None, name=f"{name}.c")
            if i == 0:
                shortcut = net.fork().conv(4 * width, 1, stride, act=None, name=f"{name}.proj")
            elif stride > 1:
                shortcut = net.fork().pool(1, stride, name=f"{name}.subsample")
            else:
                shortcut = None
            if shortcut is None:
                net.add_residual(main, name=f"{name}.add")
            else:
                net.add_projected(main, shortcut, act=None, name=f"{name}.add")
    net.affine(name="post_norm")
    net.global_pool()
    net.fc(classes, name="fc")
    net.act("softmax", name="softmax")
    return net.layers


# ---------------------------------------------------------------- VGG


def vgg(depths: tuple[int, ...], size: int = 224, classes: int = 1000) -> list[Layer]:
    """VGG (Simonyan & Zisserman 2014): 3x3 convs in five stages, 2x2 max pools, three FC layers."""
    net = Net(3, size)
    for stage, (convs, width) in enumerate(zip(depths, (64, 128, 256, 512, 512))):
        for i in range(convs):
            net.conv(width, 3, name=f"conv{stage + 1}_{i + 1}")
        net.pool(2, 2, name=f"pool{stage + 1}")
    net.fc(4096, act="relu", name="fc6").fc(4096, act="relu", name="fc7").fc(classes, name="fc8")
    net.act("softmax", name="softmax")
    return net.layers


# ---------------------------------------------------------------- DenseNet


def densenet121(size: int = 224, classes: int = 1000, growth: int = 32) -> list[Layer]:
    """DenseNet-121 (Huang et al. 2017; Keras ``DenseNet121``): blocks (6, 12, 24, 16), growth 32."""
    net = Net(3, size)
    net.conv(64, 7, 2, name="conv1").pool(3, 2, name="pool1")
    for stage, layers in enumerate((6, 12, 24, 16)):
        for i in range(layers):
            name = f"d{stage}l{i}"
            branch = net.fork().affine(name=f"{name}.preact")
            branch.conv(4 * growth, 1, name=f"{name}.1x1").conv(growth, 3, act=None, name=f"{name}.3x3")
            net.concat([Net(net.c, net.h, net.w), branch], name=f"{name}.concat")
        if stage < 3:
            net.affine(name=f"t{stage}.preact")
            net.conv(net.c // 2, 1, act=None, name=f"t{stage}.conv").pool(2, 2, name=f"t{stage}.pool")
    net.affine(name="post_norm")
    net.global_pool()
    net.fc(classes, name="fc")
    net.act("softmax", name="softmax")
    return net.layers


# ---------------------------------------------------------------- EfficientNet-EdgeTPU

# tensorflow/tpu models/official/efficientnet/edgetpu/efficientnet_edgetpu_builder.py:
#   'r1_k3_s11_e4_i24_o24_c1_noskip', 'r2_k3_s22_e8_i24_o32_c1', 'r4_k3_s22_e8_i32_o48_c1',
#   'r5_k5_s22_e8_i48_o96', 'r4_k5_s11_e8_i96_o144', 'r2_k5_s22_e8_i144_o192'
# (repeats, kernel, stride, expansion, in, out, conv_type 1 = fused, id_skip), ReLU, no SE;
# S: width 1.0, depth 1.0, 224 px; M: width 1.0, depth 1.1, 240 px. Stem 3x3 s2 to 32, head 1x1
# to 1280 (efficientnet_model.py). A fused block ("MBConvBlockWithoutDepthwise") is a 3x3
# expansion conv at stride 1 followed by a 1x1 projection that carries the stride -- the layout
# of the released 2019 models (https://github.com/tensorflow/tpu/issues/660: the stride was
# later moved to the expansion). Its expansion width is in_filters * e from the block arguments
# (96 in the first block, which is fed the stem's 32 channels).
_EDGETPU_BLOCKS = (
    (1, 3, 1, 4, 24, 24, True, False),
    (2, 3, 2, 8, 24, 32, True, True),
    (4, 3, 2, 8, 32, 48, True, True),
    (5, 5, 2, 8, 48, 96, False, True),
    (4, 5, 1, 8, 96, 144, False, True),
    (2, 5, 2, 8, 144, 192, False, True),
)


def efficientnet_edgetpu(depth: float = 1.0, size: int = 224, classes: int = 1001) -> list[Layer]:
    import math

    net = Net(3, size)
    net.conv(32, 3, 2, name="stem")
    index = 0
    for repeats, kernel, stride, expand, cin_arg, cout, fused, id_skip in _EDGETPU_BLOCKS:
        for i in range(int(math.ceil(depth * repeats))):
            s = stride if i == 0 else 1
            in_filters = cin_arg if i == 0 else cout
            cin = net.c
            name = f"b{index}"
            branch = net.fork()
            if fused:
                branch.conv(in_filters * expand, 3, 1, name=f"{name}.fused")
                branch.conv(cout, 1, s, act=None, name=f"{name}.project")
            else:
                branch.conv(in_filters * expand, 1, name=f"{name}.expand")
                branch.depthwise(kernel, s, name=f"{name}.dw")
                branch.conv(cout, 1, act=None, name=f"{name}.project")
            if id_skip and s == 1 and cin == cout:
                net.add_residual(branch, name=f"{name}.add")
            else:
                net.extend(branch)
            index += 1
    net.conv(1280, 1, name="head")
    net.global_pool()
    net.fc(classes, name="fc")
    net.act("softmax", name="softmax")
    return net.layers


REFERENCE_MODELS: dict[str, Callable[[], list[Layer]]] = {
    "mobilenet_v1_1.0_224": mobilenet_v1,
    "mobilenet_v2_1.0_224": mobilenet_v2,
    "inception_v1_224": inception_v1,
    "resnet50_v1_299": lambda: resnet_v1((3, 4, 6, 3), 299),
    "resnet50_v2_299": lambda: resnet_v2((3, 4, 6, 3), 299),
    "resnet152_v2_299": lambda: resnet_v2((3, 8, 36, 3), 299),
    "vgg16_224": lambda: vgg((2, 2, 3, 3, 3)),
    "vgg19_224": lambda: vgg((2, 2, 4, 4, 4)),
    "densenet121_224": densenet121,
    "efficientnet_edgetpu_s_224": lambda: efficientnet_edgetpu(1.0, 224),
    "efficientnet_edgetpu_m_240": lambda: efficientnet_edgetpu(1.1, 240),
}

# Published totals to check the descriptions against (multiply-adds at the stated size, params):
# MobileNet v1 569 M / 4.2 M and MobileNet v2 300 M / 3.4 M (their papers, 224 px, 1000 classes);
# VGG16 15.5 G / 138 M, VGG19 19.6 G / 144 M; ResNet-50 4.1 G / 25.6 M at 224 px;
# DenseNet-121 2.9 G / 8.0 M; Inception v1 1.5 G / 6.6-7.0 M.
EXPECTED_PARAMS_M = {
    "mobilenet_v1_1.0_224": 4.2,
    "mobilenet_v2_1.0_224": 3.5,
    "inception_v1_224": 6.6,
    "resnet50_v1_299": 25.6,
    "resnet50_v2_299": 25.6,
    "resnet152_v2_299": 60.4,
    "vgg16_224": 138.4,
    "vgg19_224": 143.7,
    "densenet121_224": 8.0,
}
