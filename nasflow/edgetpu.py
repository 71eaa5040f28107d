"""Analytical latency model of the Coral Edge TPU, and which operators it can run at all.

Nothing here touches an Edge TPU: every number is an *estimate* (``source="estimated"`` when the
``edgetpu-model`` device plugin records it). The model is deliberately small, so that each term
can be checked against a published fact, and its few free constants are fitted to Coral's own
published latencies of real models (``benchmarks/edgetpu_estimator.py`` refits them and reports
the error on models held out of the fit).

The model
---------
A network is described as an ordered list of :class:`Layer` records (operator type, MACs,
parameters, activation sizes); :func:`layers_from_arch` builds one for a nasflow ``Arch``,
:func:`layers_from_module` for any PyTorch module, and :class:`Net` helps describe reference
models by hand. For one image::

    latency = invoke + link_io + compute + layers + stream          (part on the Edge TPU)
            + boundary + cpu                                         (part that falls back)

``compute``
    ``MACs / (2 TMAC/s * u(op))``. 2 TMAC/s is the Edge TPU's published peak of 4 TOPS (int8,
    two operations per multiply-accumulate; https://coral.ai/docs/edgetpu/benchmarks/ and the
    USB Accelerator datasheet). ``u(op)`` is a fitted utilisation factor per operator class:
    dense convolutions (kxk and 1x1) and fully connected layers share ``u_conv``; depthwise
    convolutions get their own ``u_dw``, because a depthwise filter reduces over only ``k*k``
    inputs per output and so fills a matrix unit poorly (EfficientNet-EdgeTPU, searched for this
    chip, uses "fused" regular 3x3 convolutions instead in its first three stages). Pooling, residual
    adds, concatenation and elementwise activations are charged ``elements / (64 lanes * 480
    MHz)`` -- an assumption (one 64-wide int8 vector per cycle; 4 TOPS would be a 64x64 MAC
    array at ~490 MHz), not a published figure.
``layers``
    A fixed cost per operator the Edge TPU executes (fitted): pipeline fill/drain and
    instruction issue, which is why deep, thin networks run below the MAC rate.
``stream``
    The Edge TPU has "roughly 8 MB of SRAM" to cache parameters (Coral, "Edge TPU Compiler",
    https://coral.ai/docs/edgetpu/compiler/#parameter-data-caching). Compiler logs show 6.2 to
    7.5 MiB of it available for caching parameters, the rest holding activations and
    instructions (e.g.
    "On-chip memory used for caching model parameters: 6.89MiB / remaining 1.00KiB",
    https://github.com/google-coral/edgetpu/issues/512; "21.75KiB / 7.45MiB remaining",
    https://github.com/google-coral/edgetpu/issues/147). We take 7.0 MiB; parameters (int8,
    one byte each) beyond it are "off-chip memory used for streaming uncached model parameters"
    and cross the host link on every inference at the fitted link bandwidth.
``link_io``
    The input and output tensors cross the same link (USB 3.0 for the USB Accelerator, PCIe on
    the Dev Board).
``invoke``
    A fixed per-inference overhead (fitted): runtime call, USB/PCIe transaction latency.
``cpu`` and ``boundary`` (CPU fallback)
    The Edge TPU compiler maps one contiguous subgraph from the input: "as soon as an
    unsupported operation occurs, that operation and everything after it executes on the CPU,
    even if a later operation is supported" (Coral, "TensorFlow models on the Edge TPU",
    https://coral.ai/docs/edgetpu/models-intro/ -- compiler logs say "More than one subgraph is
    not supported", https://github.com/google-coral/edgetpu/issues/342). So from the first
    unsupported operator (:data:`OP_SUPPORT`) onward every layer runs on the host CPU: MACs at
    an int8 throughput calibrated from the CPU-only column of the same Coral table (median over
    the fit set), elementwise work at an assumed 1e9 elements/s, plus an assumed 10 us of
    interpreter dispatch per operator; the activation at the boundary crosses the link once.

Assumptions and limits
    * int8 everything, batch 1 (a batch of ``n`` costs ``n`` inferences), BatchNorm folded into
      the preceding convolution, ReLU/ReLU6 fused into it (zero cost);
    * utilisation does not depend on channel counts or spatial size (a real 2-D array wastes
      lanes on thin layers: the stem's 3 input channels, for instance);
    * which parameters stay cached is ignored: only how many bytes exceed the cache;
    * the chip constants (``u_conv``, ``u_dw``, per-op overhead) are fitted jointly over both
      Edge TPU columns of https://coral.ai/docs/edgetpu/benchmarks/ -- "Desktop CPU + USB
      Accelerator (USB 3.0)" (host ``usb3``) and "Dev Board" (host ``devboard``) -- while the
      per-inference overhead, link bandwidth and CPU throughput are per host (:data:`HOSTS`).
      Fitted values: u_conv ~0.83, u_dw ~0.05 (depthwise ~18x dearer per MAC), ~9 us per
      operator, ~1.2-1.3 ms per inference, ~460 MB/s (USB 3.0) and ~390 MB/s (Dev Board);
    * the error on held-out published models is reported by ``benchmarks/edgetpu_estimator.py``
      (``benchmarks/results/edgetpu_estimator.json``): treat estimates as rankings with tens of
      percent of absolute error, not as measurements.

Operator compatibility
----------------------
:data:`OP_SUPPORT` lists, per operator type, whether the Edge TPU compiler maps it, with the
source of that claim; with the rule that depthwise kernels of 5 and more are slow it is the one
place that says what the Edge TPU runs. :func:`op_compatibility` applies it to a nasflow ``Arch``
and :func:`block_support` to one block: the ``edgetpu-model`` and ``edgetpu`` devices answer
``DeviceBackend.op_support`` with it, and the ``edgetpu`` search space keeps only the blocks
they support.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from .plugin_api import OpSupport as DeviceSupport

if TYPE_CHECKING:  # torch-dependent modules are imported lazily
    import torch

    from .arch import Arch, Block

MODEL_VERSION = "1"
"""Bumped whenever the estimator's structure or constants change (it is part of the runtime)."""

PEAK_MACS_PER_S = 2.0e12
"""4 TOPS int8 peak (Coral), counted as 2 operations per multiply-accumulate."""

VECTOR_ELEMS_PER_S = 64 * 480e6
"""Assumed throughput of pooling / add / concat / elementwise ops: one 64-lane int8 vector a cycle."""

SRAM_BYTES = 8 * 1024 * 1024
"""On-chip SRAM of the Edge TPU (Coral's compiler docs: "roughly 8 MB")."""

PARAM_CACHE_BYTES = int(7.0 * 1024 * 1024)
"""Part of the SRAM the compiler can use to cache parameters (logs show 6.2 to 7.5 MiB)."""

FIRST_SUBGRAPH_ONLY = "https://coral.ai/docs/edgetpu/models-intro/"
BENCHMARKS_URL = "https://coral.ai/docs/edgetpu/benchmarks/"

# ---------------------------------------------------------------- layer descriptions

DENSE_OPS = ("conv", "pointwise", "fc")
"""Matrix-unit operators charged at u_conv."""

FUSED_OPS = ("relu", "relu6")
"""Activations the TFLite converter fuses into the preceding conv: no op, no cost."""

FREE_OPS = ("reshape", "identity")
"""Pure metadata changes: no op, no cost."""


@dataclass(frozen=True)
class Layer:
    """One operator of a network, as the estimator sees it.

    ``op`` is a key of :data:`OP_SUPPORT`. ``macs`` counts multiply-accumulates of
    conv/depthwise/fc layers; ``vector_ops`` the element operations of everything else
    (pooling windows, adds, concatenation copies, activations). ``params`` counts weights and
    biases (stored as int8, one byte each). ``in_elems``/``out_elems`` are activation sizes for
    one image. ``block`` is the index of the nasflow arch block the layer belongs to, if any.
    """

    name: str
    op: str
    macs: int = 0
    params: int = 0
    in_elems: int = 0
    out_elems: int = 0
    vector_ops: int = 0
    kernel: int = 1
    block: int | None = None


def conv_op(in_channels: int, out: int, kernel: int, groups: int) -> str:
    """Operator type of a convolution: depthwise, grouped_conv, pointwise (1x1) or conv."""
    if groups > 1 and groups == in_channels == out:
        return "depthwise"
    if groups > 1:
        return "grouped_conv"
    return "pointwise" if kernel == 1 else "conv"


def _same_out(size: int, stride: int) -> int:
    """Output size of a 'SAME'-padded window op (equal to PyTorch's k//2 padding for odd k)."""
    return -(-size // stride)


class Net:
    """Builds a :class:`Layer` list while tracking the activation shape (C, H, W).

    Convolutions use 'SAME' padding (``ceil(size / stride)``), as TensorFlow models and
    nasflow's ``k // 2`` padding both do for odd kernels. ``fork()`` starts a branch from the
    current shape; ``concat`` / ``add_residual`` join branches back, appending their layers in
    order (the execution order the CPU-fallback rule follows).
    """

    def __init__(self, channels: int, height: int, width: int | None = None, *, block: int | None = None):
        self.c, self.h, self.w = int(channels), int(height), int(width if width is not None else height)
        self.block = block
        self.layers: list[Layer] = []

    @property
    def elems(self) -> int:
        return self.c * self.h * self.w

    def _add(self, layer: Layer) -> Net:
        self.layers.append(replace(layer, block=self.block) if layer.block is None else layer)
        return self

    def fork(self) -> Net:
        """A branch starting at the current shape (its layers are not yet part of this net)."""
        return Net(self.c, self.h, self.w, block=self.block)

    def act(self, kind: str | None, name: str = "act") -> Net:
        """An activation: fused ones (relu, relu6, None) add nothing; others are separate ops."""
        if kind is None or kind in FUSED_OPS:
            return self
        return self._add(Layer(name, kind, in_elems=self.elems, out_elems=self.elems, vector_ops=self.elems))

    def conv(
        self,
        out: int,
        kernel: int = 1,
        stride: int = 1,
        *,
        groups: int = 1,
        act: str | None = "relu",
        bias: bool = True,
        name: str = "conv",
    ) -> Net:
        """kxk convolution (depthwise when groups == in == out channels); BN assumed folded."""
        cin, out = self.c, int(out)
        if cin % groups or out % groups:
            raise ValueError(f"{name}: channels {cin}->{out} not divisible by groups={groups}")
        h, w = _same_out(self.h, stride), _same_out(self.w, stride)
        per_out = kernel * kernel * (cin // groups)
        op = conv_op(cin, out, kernel, groups)
        in_elems = self.elems
        self.c, self.h, self.w = out, h, w
        self._add(
            Layer(
                name,
                op,
                macs=h * w * out * per_out,
                params=out * per_out + (out if bias else 0),
                in_elems=in_elems,
                out_elems=self.elems,
                kernel=kernel,
            )
        )
        return self.act(act, name=f"{name}.act")

    def depthwise(self, kernel: int, stride: int = 1, *, act: str | None = "relu", name: str = "dw") -> Net:
        return self.conv(self.c, kernel, stride, groups=self.c, act=act, name=name)

    def pool(self, kernel: int, stride: int, *, name: str = "pool") -> Net:
        in_elems = self.elems
        self.h, self.w = _same_out(self.h, stride), _same_out(self.w, stride)
        return self._add(
            Layer(
                name, "pool", in_elems=in_elems, out_elems=self.elems, vector_ops=self.elems * kernel * kernel,
                kernel=kernel,
            )
        )

    def global_pool(self, *, name: str = "global_pool") -> Net:
        in_elems = self.elems
        self.h = self.w = 1
        return self._add(Layer(name, "global_pool", in_elems=in_elems, out_elems=self.elems, vector_ops=in_elems))

    def fc(self, out: int, *, act: str | None = None, name: str = "fc") -> Net:
        cin = self.elems  # flattens
        self.c, self.h, self.w = int(out), 1, 1
        self._add(Layer(name, "fc", macs=cin * out, params=cin * out + out, in_elems=cin, out_elems=out))
        return self.act(act, name=f"{name}.act")

    def affine(self, *, act: str | None = "relu", name: str = "affine") -> Net:
        """A BatchNorm that cannot be folded (pre-activation): an elementwise multiply-add."""
        self._add(Layer(name, "mul", params=2 * self.c, in_elems=self.elems, out_elems=self.elems, vector_ops=self.elems))
        return self.act(act, name=f"{name}.act")

    def squeeze_excite(self, reduced: int, *, gate: str = "hsigmoid", name: str = "se") -> Net:
        """Global pool, 1x1 reduce + ReLU, 1x1 expand + gate, then a channel-wise (broadcast) multiply."""
        branch = self.fork().global_pool(name=f"{name}.pool")
        branch.conv(reduced, 1, act="relu", name=f"{name}.reduce").conv(self.c, 1, act=gate, name=f"{name}.expand")
        self.layers += branch.layers
        scale = Layer(f"{name}.scale", "se_scale", in_elems=self.elems, out_elems=self.elems, vector_ops=self.elems)
        return self._add(scale)

    def channel_shuffle(self, *, name: str = "shuffle") -> Net:
        """ShuffleNet's channel shuffle: reshape, transpose, reshape (a copy of every element)."""
        layer = Layer(name, "channel_shuffle", in_elems=self.elems, out_elems=self.elems, vector_ops=self.elems)
        return self._add(layer)

    def extend(self, branch: Net) -> Net:
        """Continue with a branch's layers and output shape."""
        self.layers += branch.layers
        self.c, self.h, self.w = branch.c, branch.h, branch.w
        return self

    def add_residual(self, branch: Net, *, act: str | None = None, name: str = "add") -> Net:
        """Run `branch` from the current shape and add its output to the current activation."""
        if (branch.c, branch.h, branch.w) != (self.c, self.h, self.w):
            raise ValueError(
                f"{name}: residual shapes differ: {(self.c, self.h, self.w)} vs {(branch.c, branch.h, branch.w)}"
            )
        self.layers += branch.layers
        self._add(Layer(name, "add", in_elems=2 * self.elems, out_elems=self.elems, vector_ops=self.elems))
        return self.act(act, name=f"{name}.act")

    def add_projected(self, main: Net, shortcut: Net, *, act: str | None = "relu", name: str = "add") -> Net:
        """Add two branches of equal output shape (e.g. a residual with a projection shortcut)."""
        if (main.c, main.h, main.w) != (shortcut.c, shortcut.h, shortcut.w):
            raise ValueError(f"{name}: branch shapes differ")
        self.layers += shortcut.layers + main.layers
        self.c, self.h, self.w = main.c, main.h, main.w
        self._add(Layer(name, "add", in_elems=2 * self.elems, out_elems=self.elems, vector_ops=self.elems))
        return self.act(act, name=f"{name}.act")

    def concat(self, branches: Sequence[Net], *, name: str = "concat") -> Net:
        sizes = {(b.h, b.w) for b in branches}
        if len(sizes) != 1:
            raise ValueError(f"{name}: branches have different spatial sizes {sorted(sizes)}")
        for branch in branches:
            self.layers += branch.layers
        self.c = sum(b.c for b in branches)
        self.h, self.w = sizes.pop()
        return self._add(Layer(name, "concat", in_elems=self.elems, out_elems=self.elems, vector_ops=self.elems))


# ---------------------------------------------------------------- operator compatibility


@dataclass(frozen=True)
class OpMapping:
    """Whether the Edge TPU compiler maps an operator type, and where that claim comes from."""

    on_tpu: bool
    note: str
    source: str


_OP_TABLE = "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"

OP_SUPPORT: dict[str, OpMapping] = {
    # Listed in Coral's supported-operations table (Conv2d, DepthwiseConv2d, FullyConnected,
    # AveragePool2d, MaxPool2d, Mean over x/y, Add, Mul, Concatenation, Logistic, ReLU, ReLU6,
    # Tanh, Softmax, Reshape); the 2019 edition of the table is mirrored at
    # https://github.com/dgist-datalab/Datalab_Intern/blob/master/Edge_TPU/convert_model_for_Edge_TPU.md
    "conv": OpMapping(True, "Conv2d", _OP_TABLE),
    "pointwise": OpMapping(True, "Conv2d (1x1)", _OP_TABLE),
    "depthwise": OpMapping(True, "DepthwiseConv2d", _OP_TABLE),
    "fc": OpMapping(True, "FullyConnected", _OP_TABLE),
    "pool": OpMapping(True, "MaxPool2d / AveragePool2d", _OP_TABLE),
    "global_pool": OpMapping(True, "Mean (reduction over x/y only)", _OP_TABLE),
    "add": OpMapping(True, "Add", _OP_TABLE),
    "mul": OpMapping(True, "Mul (same shape, or by a constant)", _OP_TABLE),
    "concat": OpMapping(True, "Concatenation", _OP_TABLE),
    "relu": OpMapping(True, "ReLU (fused)", _OP_TABLE),
    "relu6": OpMapping(True, "ReLU6 (fused)", _OP_TABLE),
    "sigmoid": OpMapping(True, "Logistic", _OP_TABLE),
    "tanh": OpMapping(True, "Tanh", _OP_TABLE),
    "softmax": OpMapping(True, "Softmax", _OP_TABLE),
    # hard-sigmoid as relu6(x + 3) / 6 lowers to Add, ReLU6 and Mul by a constant: all listed.
    "hsigmoid": OpMapping(True, "relu6(x+3)/6 = Add + ReLU6 + Mul", _OP_TABLE),
    "reshape": OpMapping(True, "Reshape", _OP_TABLE),
    "identity": OpMapping(True, "no op", _OP_TABLE),
    # Not mapped:
    "hswish": OpMapping(
        False,
        "HARD_SWISH is not mapped by the Edge TPU compiler (compiler 15.0: 'LeakyRelu and Hardswish ops are "
        "not supported'; a MobileNetV3 with hard-swish ran in 200 ms vs 12 ms for Coral's ReLU variant)",
        "https://github.com/google-coral/edgetpu/issues/272 ; https://github.com/google-coral/edgetpu/issues/353",
    ),
    "leaky_relu": OpMapping(
        False,
        "LEAKY_RELU is not mapped",
        "https://github.com/google-coral/edgetpu/issues/272 ; https://github.com/google-coral/edgetpu/issues/597",
    ),
    # Conservative: Logistic and Mul are each in the table, but Google excluded swish (and SE)
    # from EfficientNet-EdgeTPU "due to some temporary EdgeTPU hardware/software stack
    # limitations" (M. Tan, https://github.com/tensorflow/tpu/issues/556), and EfficientNet-Lite
    # replaced swish with ReLU6 for accelerators.
    "swish": OpMapping(
        False,
        "swish (x * sigmoid(x)) treated as unmapped: excluded from EfficientNet-EdgeTPU for Edge TPU stack limitations",
        "https://github.com/tensorflow/tpu/issues/556",
    ),
    # The channel-wise (broadcast) multiply that applies squeeze-excite gates. Mean, 1x1 convs
    # and Logistic are listed, so the pool and the two small convs map; the broadcast Mul is what
    # we treat as unmapped, following the same two sources (SE excluded from EfficientNet-EdgeTPU;
    # EfficientNet-Lite: "Remove squeeze-and-excite (SE): SE are not well supported for some
    # mobile accelerators", https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite).
    # Set assume_se_mapped=True for a compiler known to map it.
    "se_scale": OpMapping(
        False,
        "squeeze-excite's broadcast Mul treated as unmapped (SE excluded from EfficientNet-EdgeTPU and -Lite)",
        "https://github.com/tensorflow/tpu/issues/556 ; "
        "https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite",
    ),
    # Conservative: Coral's table lists Conv2d without saying whether a grouped one (filter depth
    # below the input depth) maps; converters of older TensorFlow versions could not express it at
    # all. FBNet's grouped 1x1 convs are therefore treated as falling back.
    "grouped_conv": OpMapping(
        False,
        "grouped (non-depthwise) convolution: not listed as supported by the Edge TPU compiler; treated as unmapped",
        _OP_TABLE,
    ),
    # The shuffle is a Reshape to 5-D, a Transpose and a Reshape back; the table limits tensors to
    # 3 dimensions that may exceed size 1, which a 5-D (n, g, c/g, h, w) view breaks.
    "channel_shuffle": OpMapping(
        False,
        "channel shuffle: a transpose of a 5-D view; the Edge TPU supports tensors with at most 3 dimensions "
        "larger than 1, so it is treated as unmapped",
        _OP_TABLE,
    ),
    "other": OpMapping(False, "operator of unknown type: assumed not mappable", _OP_TABLE),
}


def op_support(op: str, *, assume_se_mapped: bool = False) -> OpMapping:
    """Support entry for an operator type (unknown types count as 'other': not mapped)."""
    if op == "se_scale" and assume_se_mapped:
        return OpMapping(True, "broadcast Mul assumed mapped (assume_se_mapped=True)", _OP_TABLE)
    return OP_SUPPORT.get(op, OP_SUPPORT["other"])


@dataclass(frozen=True)
class Incompatibility:
    """Something in an architecture the Edge TPU runs badly or not at all.

    ``severity`` is ``"cpu_fallback"`` when the compiler cannot map it (this layer and every
    later one run on the CPU) or ``"slow"`` when it maps but is known to be costly.
    ``position`` is the layer's 0-based position in the architecture string (stem = 0, block
    ``i`` = ``i + 1``), ``token`` that layer's string.
    """

    position: int
    token: str
    op: str
    severity: Literal["cpu_fallback", "slow"]
    reason: str
    source: str


_LARGE_DW_NOTE = (
    "depthwise kxk with k >= 5 costs k*k/9 times a 3x3 one on the part of the Edge TPU that runs depthwise "
    "convolutions at low utilisation; Edge TPU-targeted networks use fused 3x3 convolutions in early, "
    "high-resolution stages and keep 5x5 depthwise kernels to later, low-resolution ones (EfficientNet-EdgeTPU "
    "block arguments; MobileNetEdgeTPU)"
)
_LARGE_DW_SOURCE = (
    "https://github.com/tensorflow/tpu/blob/master/models/official/efficientnet/edgetpu/efficientnet_edgetpu_builder.py ; "
    "https://ai.googleblog.com/2019/11/introducing-next-generation-on-device.html"
)


@dataclass(frozen=True)
class _Issue:
    """What one operator of a network costs the Edge TPU, by :data:`OP_SUPPORT` and the kernel rule."""

    op: str  # the operator as reported ("se" for squeeze-excite's broadcast multiply)
    severity: Literal["cpu_fallback", "slow"]
    reason: str
    source: str


def _layer_issue(layer: Layer, assume_se_mapped: bool) -> _Issue | None:
    """The one rule for whether the Edge TPU runs `layer` well: None when it does."""
    if layer.op == "se_scale":
        entry = op_support("se_scale", assume_se_mapped=assume_se_mapped)
        if entry.on_tpu:
            reason = "squeeze-excite assumed mapped; its global pool and 1x1 convs on a 1x1 map run far below peak"
            return _Issue("se", "slow", reason, entry.source)
        return _Issue("se", "cpu_fallback", entry.note, entry.source)
    entry = op_support(layer.op)
    if not entry.on_tpu:
        return _Issue(layer.op, "cpu_fallback", entry.note, entry.source)
    if layer.op == "depthwise" and layer.kernel >= 5:
        return _Issue(f"depthwise{layer.kernel}x{layer.kernel}", "slow", _LARGE_DW_NOTE, _LARGE_DW_SOURCE)
    return None


def op_compatibility(arch: Arch, *, assume_se_mapped: bool = False) -> list[Incompatibility]:
    """Every layer of `arch` (stem, blocks, head) the Edge TPU falls back on or runs slowly, in order.

    Each block kind says which operators it executes (`Block.edgetpu`); every operator that
    :data:`OP_SUPPORT` says is not mapped (hard-swish, swish, grouped convs, channel shuffles and,
    unless ``assume_se_mapped``, squeeze-excite's broadcast multiply, reported as ``se``) is a
    ``cpu_fallback``; depthwise kernels of 5 and more are ``slow`` notes. One entry per layer and
    operator; an empty list means the whole network maps to the Edge TPU.
    """
    layers = layers_from_arch(arch, 3, 224, 1000)  # which operators run does not depend on the geometry
    tokens = [arch.stem_token(), *(block.token() for block in arch.blocks), arch.head_token()]
    found: list[Incompatibility] = []
    seen: set[tuple[int, str]] = set()
    for layer in layers:
        if layer.block is not None:
            position = layer.block + 1
        else:
            position = 0 if layer.name.startswith("stem") else len(tokens) - 1
        issue = _layer_issue(layer, assume_se_mapped)
        if issue is not None and (position, issue.op) not in seen:
            seen.add((position, issue.op))
            found.append(Incompatibility(position, tokens[position], issue.op, issue.severity, issue.reason, issue.source))
    # Per layer, what falls back comes before what is merely slow.
    return sorted(found, key=lambda i: (i.position, i.severity != "cpu_fallback"))


_BLOCK_PROBE_SIZE = 8
"""Side of the map a block is described on for `block_support`: which operators a block executes
does not depend on the map's size (stride 2 still leaves a 4x4 map)."""


def block_support(block: Block, in_channels: int, *, assume_se_mapped: bool = False) -> DeviceSupport:
    """How the Edge TPU runs one block fed `in_channels` channels, as the `edgetpu-model` and
    `edgetpu` devices report it (`DeviceBackend.op_support`).

    ``unsupported`` when an operator of the block is not mapped (the compiler leaves it and every
    later operator to the host CPU), else ``slow`` when one maps but runs off the fast path (a
    depthwise kernel of 5 or more; squeeze-excite with ``assume_se_mapped``), else ``supported``.
    The reason names each operator of that level, with the source of the claim.
    """
    net = Net(in_channels, _BLOCK_PROBE_SIZE)
    block.edgetpu(net, block.kind)
    issues: dict[str, _Issue] = {}
    for layer in net.layers:
        issue = _layer_issue(layer, assume_se_mapped)
        if issue is not None:
            issues.setdefault(issue.op, issue)
    for severity, level, says in (("cpu_fallback", "unsupported", "runs on the host CPU, and so does every later operator"),
                                  ("slow", "slow", "maps to the Edge TPU but runs slowly")):
        worst = [i for i in issues.values() if i.severity == severity]
        if worst:
            return DeviceSupport(level, "; ".join(f"{i.op} {says}: {i.reason} ({i.source})" for i in worst))
    return DeviceSupport()


# ---------------------------------------------------------------- constants and estimate


@dataclass(frozen=True)
class HostProfile:
    """Constants of one host setting. Fitted ones come from benchmarks/edgetpu_estimator.py."""

    name: str
    description: str
    invoke_overhead_ms: float  # fitted
    layer_overhead_us: float  # fitted
    u_conv: float  # fitted: utilisation of dense conv / 1x1 / fc, fraction of PEAK_MACS_PER_S
    u_dw: float  # fitted: utilisation of depthwise conv
    link_mb_per_s: float  # fitted: host link bandwidth, MB/s (1e6 bytes)
    cpu_gmacs: float  # calibrated: host CPU int8 throughput (median over the fit set's CPU column)
    cpu_gelems: float = 1.0  # assumed: host CPU elementwise throughput, 1e9 elements/s
    cpu_op_overhead_us: float = 10.0  # assumed: interpreter dispatch per operator run on the CPU


# Fitted by `benchmarks/edgetpu_estimator.py`: joint non-negative least squares on relative error
# over both Edge TPU columns of Coral's table for its fit set (MobileNet v1/v2, Inception v1,
# ResNet-50 V1, ResNet-152 V2, VGG16). The chip's constants (per-op overhead, u_conv, u_dw) are
# shared, since both settings use the same Edge TPU; overhead and link bandwidth are per host;
# cpu_gmacs is the median MAC rate of the fit set on the table's CPU-only column for that host.
# The benchmark refits them and exits with an error if these copies drift from the fit.
_CHIP = {"layer_overhead_us": 8.803, "u_conv": 0.825, "u_dw": 0.0468}

HOSTS: dict[str, HostProfile] = {
    "usb3": HostProfile(
        name="usb3",
        description="Coral USB Accelerator on USB 3.0, desktop host CPU",
        invoke_overhead_ms=1.229,
        link_mb_per_s=459.8,
        cpu_gmacs=12.99,
        **_CHIP,
    ),
    "devboard": HostProfile(
        name="devboard",
        description="Coral Dev Board (Edge TPU on the SoM, quad Cortex-A53 host)",
        invoke_overhead_ms=1.295,
        link_mb_per_s=390.0,
        cpu_gmacs=3.572,
        **_CHIP,
    ),
}

HostName = Literal["usb3", "devboard"]


@dataclass(frozen=True)
class EstimateBreakdown:
    """Estimated latency of one inference (times ``batch_size``) and where it goes, in ms."""

    total_ms: float
    invoke_ms: float
    link_io_ms: float
    compute_ms: float
    layer_overhead_ms: float
    stream_ms: float
    boundary_ms: float
    cpu_ms: float
    batch_size: int
    host: str
    tpu_layers: int
    cpu_layers: int
    macs: int
    params: int
    tpu_param_bytes: int
    streamed_bytes: int
    fallback_index: int | None  # index into the layer list of the first unmapped layer
    fallback_op: str | None
    fallback_layer: str | None

    @property
    def edgetpu_ms(self) -> float:
        """Time spent on (and talking to) the Edge TPU."""
        return self.invoke_ms + self.link_io_ms + self.compute_ms + self.layer_overhead_ms + self.stream_ms

    @property
    def falls_back(self) -> bool:
        return self.fallback_index is not None

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["edgetpu_ms"] = self.edgetpu_ms
        return out


def _op_count(layers: Sequence[Layer]) -> int:
    return sum(1 for layer in layers if layer.op not in FUSED_OPS + FREE_OPS)


def tpu_seconds_terms(layers: Sequence[Layer]) -> dict[str, float]:
    """The fitted model's linear features of an all-on-TPU layer list (before its constants).

    total_s = invoke_s + layers * layer_s + (dense_macs / PEAK) / u_conv + (dw_macs / PEAK) / u_dw
              + vector_s + (io_bytes + streamed_bytes) / link_bytes_per_s
    """
    dense = sum(layer.macs for layer in layers if layer.op in DENSE_OPS)
    dw = sum(layer.macs for layer in layers if layer.op == "depthwise")
    vector = sum(layer.vector_ops for layer in layers)
    params = sum(layer.params for layer in layers)
    io = (layers[0].in_elems + layers[-1].out_elems) if layers else 0
    return {
        "layers": float(_op_count(layers)),
        "dense_peak_s": dense / PEAK_MACS_PER_S,
        "dw_peak_s": dw / PEAK_MACS_PER_S,
        "vector_s": vector / VECTOR_ELEMS_PER_S,
        "link_bytes": float(io + max(0, params - PARAM_CACHE_BYTES)),
    }


def estimate_latency(
    layers: Sequence[Layer],
    host: HostName | HostProfile = "usb3",
    *,
    assume_se_mapped: bool = False,
    param_cache_bytes: int = PARAM_CACHE_BYTES,
    batch_size: int = 1,
) -> EstimateBreakdown:
    """Estimated Edge TPU latency of a network described by `layers` (see the module docstring)."""
    profile = HOSTS[host] if isinstance(host, str) else host
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layers = list(layers)
    fallback = next(
        (i for i, layer in enumerate(layers) if not op_support(layer.op, assume_se_mapped=assume_se_mapped).on_tpu),
        None,
    )
    tpu = layers if fallback is None else layers[:fallback]
    cpu = [] if fallback is None else layers[fallback:]

    link_bps = profile.link_mb_per_s * 1e6
    tpu_params = sum(layer.params for layer in tpu)
    streamed = max(0, tpu_params - param_cache_bytes)
    if tpu:
        invoke_ms = profile.invoke_overhead_ms
        io_bytes = tpu[0].in_elems + (0 if cpu else tpu[-1].out_elems)
        link_io_ms = io_bytes / link_bps * 1e3
        dense = sum(layer.macs for layer in tpu if layer.op in DENSE_OPS)
        dw = sum(layer.macs for layer in tpu if layer.op == "depthwise")
        vector = sum(layer.vector_ops for layer in tpu)
        compute_ms = 1e3 * (
            dense / (PEAK_MACS_PER_S * profile.u_conv)
            + dw / (PEAK_MACS_PER_S * profile.u_dw)
            + vector / VECTOR_ELEMS_PER_S
        )
        layer_ms = _op_count(tpu) * profile.layer_overhead_us / 1e3
        stream_ms = streamed / link_bps * 1e3
    else:
        invoke_ms = link_io_ms = compute_ms = layer_ms = stream_ms = 0.0
    if cpu:
        boundary_ms = (cpu[0].in_elems / link_bps * 1e3) if tpu else 0.0
        cpu_ms = 1e3 * (
            sum(layer.macs for layer in cpu) / (profile.cpu_gmacs * 1e9)
            + sum(layer.vector_ops for layer in cpu) / (profile.cpu_gelems * 1e9)
        ) + _op_count(cpu) * profile.cpu_op_overhead_us / 1e3
    else:
        boundary_ms = cpu_ms = 0.0
    per_image = invoke_ms + link_io_ms + compute_ms + layer_ms + stream_ms + boundary_ms + cpu_ms
    first = layers[fallback] if fallback is not None else None
    return EstimateBreakdown(
        total_ms=per_image * batch_size,
        invoke_ms=invoke_ms * batch_size,
        link_io_ms=link_io_ms * batch_size,
        compute_ms=compute_ms * batch_size,
        layer_overhead_ms=layer_ms * batch_size,
        stream_ms=stream_ms * batch_size,
        boundary_ms=boundary_ms * batch_size,
        cpu_ms=cpu_ms * batch_size,
        batch_size=batch_size,
        host=profile.name,
        tpu_layers=_op_count(tpu),
        cpu_layers=_op_count(cpu),
        macs=sum(layer.macs for layer in layers),
        params=sum(layer.params for layer in layers),
        tpu_param_bytes=tpu_params,
        streamed_bytes=streamed,
        fallback_index=fallback,
        fallback_op=first.op if first else None,
        fallback_layer=first.name if first else None,
    )


# ---------------------------------------------------------------- nasflow archs and torch modules


def _hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def layers_from_arch(
    arch: Arch, in_channels: int = 3, image_size: int | Sequence[int] = 224, num_classes: int = 1000
) -> list[Layer]:
    """Layer list of ``build_model(arch, in_channels, num_classes)`` on one image of `image_size`.

    Each block kind appends its own operators (`Block.edgetpu`). Dense/depthwise/fc MACs equal
    ``nasflow.arch.count_macs``; BatchNorm is folded (each conv gets a bias), ReLU/ReLU6 are
    fused, hard-swish and swish are separate ops, squeeze-excite is global pool + two 1x1 convs
    + hard-sigmoid + a broadcast multiply, a residual is an add.
    """
    from .arch import validate_arch  # noqa: PLC0415

    validate_arch(arch, in_channels)
    height, width = _hw(image_size)
    net = Net(in_channels, height, width)
    net.conv(arch.stem, 3, arch.stem_stride, act=arch.stem_act, name="stem")
    for index, block in enumerate(arch.blocks):
        net.block = index
        block.edgetpu(net, f"block{index}")
    net.block = None
    if arch.head is not None:
        net.conv(arch.head, 1, act=arch.head_act, name="head")
    net.global_pool(name="pool")
    if arch.head_fc is not None:
        net.fc(arch.head_fc, act=arch.head_act, name="head_fc")
    net.fc(num_classes, name="classifier")
    return net.layers


_ACTIVATION_MODULES = {
    "ReLU": "relu",
    "ReLU6": "relu6",
    "Hardswish": "hswish",
    "HardSwish": "hswish",  # nasflow.arch.layers.HardSwish
    "SiLU": "swish",
    "Sigmoid": "sigmoid",
    "Hardsigmoid": "hsigmoid",
    "Tanh": "tanh",
    "LeakyReLU": "leaky_relu",
    "Softmax": "softmax",
}
_FREE_MODULES = ("BatchNorm1d", "BatchNorm2d", "Identity", "Dropout", "Flatten", "Dropout2d")


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    shape = getattr(meta, "shape", None)
    return tuple(int(n) for n in shape) if shape is not None else None


def _per_image(shape: Sequence[int] | None) -> int:
    if not shape:
        return 0
    return math.prod(shape[1:]) if len(shape) > 1 else int(shape[0])


def _module_layers(
    name: str, module: torch.nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> list[Layer]:
    """Layers for one leaf module call with known input/output shapes (batch first)."""
    from torch import nn  # noqa: PLC0415

    from .arch.layers import ChannelShuffle, SqueezeExcite  # noqa: PLC0415

    kind = type(module).__name__
    in_elems, out_elems = _per_image(in_shape), _per_image(out_shape)
    if isinstance(module, nn.Conv2d):
        k = int(module.kernel_size[0]) * int(module.kernel_size[1])
        cin, cout, groups = module.in_channels, module.out_channels, module.groups
        spatial = out_elems // max(1, cout)
        params = sum(p.numel() for p in module.parameters(recurse=False))
        op = conv_op(cin, cout, int(module.kernel_size[0]), groups)
        return [Layer(name, op, macs=spatial * cout * (cin // groups) * k, params=params, in_elems=in_elems,
                      out_elems=out_elems, kernel=int(module.kernel_size[0]))]
    if isinstance(module, nn.Linear):
        rows = max(1, out_elems // module.out_features)
        params = sum(p.numel() for p in module.parameters(recurse=False))
        macs = rows * module.in_features * module.out_features
        return [Layer(name, "fc", macs=macs, params=params, in_elems=in_elems, out_elems=out_elems)]
    if isinstance(module, ChannelShuffle):
        return [Layer(name, "channel_shuffle", in_elems=in_elems, out_elems=out_elems, vector_ops=out_elems)]
    if isinstance(module, SqueezeExcite):
        channels = module.expand.out_channels
        reduced = module.reduce.out_channels
        net = Net(channels, 1, 1)
        spatial = in_elems // max(1, channels)
        pool = Layer(f"{name}.pool", "global_pool", in_elems=in_elems, out_elems=channels, vector_ops=in_elems)
        net.conv(reduced, 1, act="relu", name=f"{name}.reduce").conv(channels, 1, act="hsigmoid", name=f"{name}.expand")
        scale = Layer(f"{name}.scale", "se_scale", in_elems=in_elems, out_elems=spatial * channels, vector_ops=in_elems)
        return [pool, *net.layers, scale]
    if kind in _ACTIVATION_MODULES:
        op = _ACTIVATION_MODULES[kind]
        if op in FUSED_OPS:
            return []
        return [Layer(name, op, in_elems=in_elems, out_elems=out_elems, vector_ops=out_elems)]
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
        return [Layer(name, "pool", in_elems=in_elems, out_elems=out_elems, vector_ops=out_elems * k * k, kernel=k)]
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        op = "global_pool" if len(out_shape) >= 4 and out_shape[-1] == out_shape[-2] == 1 else "pool"
        return [Layer(name, op, in_elems=in_elems, out_elems=out_elems, vector_ops=in_elems)]
    if kind in _FREE_MODULES or isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d, nn.Identity, nn.Dropout, nn.Flatten)):
        return []
    return [Layer(name, "other", in_elems=in_elems, out_elems=out_elems, vector_ops=out_elems)]


_FREE_FUNCTIONS = {"flatten", "reshape", "view", "contiguous", "size", "dim", "getattr", "getitem", "squeeze",
                   "unsqueeze", "dropout", "batch_norm", "type_as", "float", "to"}


def _function_layer(node, name: str) -> list[Layer]:
    """Layers for a call_function / call_method node of an fx graph."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    target = node.target
    fname = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    out_shape = _shape(node)
    out_elems = _per_image(out_shape)
    tensor_args = [a for a in node.args if hasattr(a, "meta") and _shape(a) is not None]
    in_elems = sum(_per_image(_shape(a)) for a in tensor_args)
    if fname in _FREE_FUNCTIONS or out_shape is None:
        return []
    if target in (F.relu, F.relu6, torch.relu) or fname in ("relu", "relu6", "relu_"):
        return []
    simple = {
        "hardswish": "hswish", "silu": "swish", "sigmoid": "sigmoid", "hardsigmoid": "hsigmoid",
        "tanh": "tanh", "leaky_relu": "leaky_relu", "softmax": "softmax",
    }
    if fname in simple:
        return [Layer(name, simple[fname], in_elems=in_elems, out_elems=out_elems, vector_ops=out_elems)]
    if fname in ("add", "iadd", "sub", "mul", "imul", "truediv", "div"):
        if len(tensor_args) < 2:  # by a constant: a cheap elementwise op the compiler maps
            return [Layer(name, "mul", in_elems=in_elems, out_elems=out_elems, vector_ops=out_elems)]
        shapes = {_shape(a) for a in tensor_args}
        if fname in ("mul", "imul") and len(shapes) > 1:
            return [Layer(name, "se_scale", in_elems=in_elems, out_elems=out_elems, vector_ops=out_elems)]
        op = "add" if fname in ("add", "iadd", "sub") else "mul"
        return [Layer(name, op, in_elems=in_elems, out_elems=out_elems, vector_ops=out_elems)]
    if fname in ("cat", "concat"):
        return [Layer(name, "concat", in_elems=out_elems, out_elems=out_elems, vector_ops=out_elems)]
    if fname in ("adaptive_avg_pool2d", "mean", "adaptive_max_pool2d", "amax"):
        op = "global_pool" if out_shape and (len(out_shape) < 4 or out_shape[-1] == out_shape[-2] == 1) else "pool"
        return [Layer(name, op, in_elems=in_elems, out_elems=out_elems, vector_ops=in_elems)]
    if fname in ("max_pool2d", "avg_pool2d"):
        return [Layer(name, "pool", in_elems=in_elems, out_elems=out_elems, vector_ops=in_elems)]
    if fname in ("linear", "conv2d") and len(tensor_args) >= 2:
        x_shape, w_shape = _shape(node.args[0]), _shape(node.args[1])
        if x_shape is None or w_shape is None:
            return [Layer(name, "other", in_elems=in_elems, out_elems=out_elems, vector_ops=out_elems)]
        params = sum(math.prod(_shape(a) or ()) for a in tensor_args[1:])
        x_elems = _per_image(x_shape)
        if fname == "linear":  # weight (out, in)
            macs = out_elems * w_shape[1]
            return [Layer(name, "fc", macs=macs, params=params, in_elems=x_elems, out_elems=out_elems)]
        groups = int(node.kwargs.get("groups", node.args[6] if len(node.args) > 6 else 1))
        per_out = math.prod(w_shape[1:])  # (out, in / groups, kh, kw)
        op = conv_op(x_shape[1], w_shape[0], int(w_shape[2]), groups)
        return [Layer(name, op, macs=out_elems * per_out, params=params, in_elems=x_elems, out_elems=out_elems,
                      kernel=int(w_shape[2]))]
    return [Layer(name, "other", in_elems=in_elems, out_elems=out_elems, vector_ops=out_elems)]


def _layers_fx(model: torch.nn.Module, x: torch.Tensor) -> list[Layer]:
    import torch.fx  # noqa: PLC0415
    from torch.fx.passes.shape_prop import ShapeProp  # noqa: PLC0415

    from .arch.layers import ChannelShuffle, HardSwish, SqueezeExcite  # noqa: PLC0415

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):  # noqa: ANN001
            return isinstance(m, (HardSwish, SqueezeExcite, ChannelShuffle)) or super().is_leaf_module(m, qualname)

    graph = _Tracer().trace(model)
    gm = torch.fx.GraphModule(model, graph)
    ShapeProp(gm).propagate(x)
    layers: list[Layer] = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            arg = node.args[0] if node.args else None
            in_shape = _shape(arg) if arg is not None and hasattr(arg, "meta") else None
            out_shape = _shape(node)
            if in_shape is None or out_shape is None:
                continue
            layers += _module_layers(str(node.target), gm.get_submodule(node.target), in_shape, out_shape)
        elif node.op in ("call_function", "call_method"):
            layers += _function_layer(node, node.name)
    return layers


def _layers_hooks(model: torch.nn.Module, x: torch.Tensor) -> list[Layer]:
    """Fallback when fx cannot trace: leaf-module hooks (functional ops are not seen)."""
    from .arch.layers import ChannelShuffle, HardSwish, SqueezeExcite  # noqa: PLC0415

    layers: list[Layer] = []
    handles = []
    se_children: set[int] = set()
    for module in model.modules():
        if isinstance(module, SqueezeExcite):
            se_children.update(id(m) for m in module.modules() if m is not module)

    def hook(name):
        def _record(module, inputs, output):
            if not inputs or not hasattr(inputs[0], "shape") or not hasattr(output, "shape"):
                return
            layers.extend(_module_layers(name, module, tuple(inputs[0].shape), tuple(output.shape)))

        return _record

    for name, module in model.named_modules():
        if id(module) in se_children:
            continue
        if isinstance(module, (HardSwish, SqueezeExcite, ChannelShuffle)) or not any(True for _ in module.children()):
            handles.append(module.register_forward_hook(hook(name or type(module).__name__)))
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return layers


def layers_from_module(model: torch.nn.Module, input_shape: Sequence[int]) -> list[Layer]:
    """Layer list of a PyTorch module for one image (input_shape is batch first; batch is ignored).

    A nasflow ``ArchNet`` is described exactly from its ``arch``. Any other module is traced with
    ``torch.fx`` (nasflow's HardSwish and SqueezeExcite kept whole) and shapes propagated with a
    zero input; if tracing fails, leaf-module forward hooks are used instead, which do not see
    functional ops (``F.relu``, ``x + y``, ...). The model is run in eval mode under
    ``torch.no_grad`` and left as it came in.
    """
    import torch  # noqa: PLC0415

    from .export import eval_mode  # noqa: PLC0415
    from .arch.builder import ArchNet  # noqa: PLC0415

    shape = (1, *tuple(int(n) for n in input_shape)[1:])
    if isinstance(model, ArchNet):
        if len(shape) != 4 or shape[1] != model.in_channels:
            raise ValueError(f"ArchNet expects input (N, {model.in_channels}, H, W), got {tuple(input_shape)}")
        return layers_from_arch(model.arch, model.in_channels, (shape[2], shape[3]), model.num_classes)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    x = torch.zeros(shape, device=device)
    with eval_mode(model), torch.no_grad():
        try:
            return _layers_fx(model, x)
        except Exception:  # data-dependent control flow and the like: fall back to hooks
            return _layers_hooks(model, x)


def estimate_arch(
    arch: Arch,
    in_channels: int = 3,
    image_size: int | Sequence[int] = 224,
    num_classes: int = 1000,
    host: HostName | HostProfile = "usb3",
    **kwargs: Any,
) -> EstimateBreakdown:
    """``estimate_latency(layers_from_arch(...))`` in one call."""
    return estimate_latency(layers_from_arch(arch, in_channels, image_size, num_classes), host, **kwargs)


__all__ = [
    "BENCHMARKS_URL",
    "HOSTS",
    "MODEL_VERSION",
    "OP_SUPPORT",
    "PARAM_CACHE_BYTES",
    "PEAK_MACS_PER_S",
    "SRAM_BYTES",
    "EstimateBreakdown",
    "HostProfile",
    "Incompatibility",
    "Layer",
    "Net",
    "OpMapping",
    "block_support",
    "estimate_arch",
    "estimate_latency",
    "layers_from_arch",
    "layers_from_module",
    "op_compatibility",
    "op_support",
    "tpu_seconds_terms",
]
