"""What TensorRT's ONNX parser accepts, as data: the floor every target shares (TensorRT 8.5).

Source: onnx/onnx-tensorrt ``docs/operators.md`` at the TensorRT 8.5 release (commit
6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc: "TensorRT 8.5 supports operators up to Opset 17"),
with the Pad/Resize/Q-DQ rules its ``builtin_op_importers.cpp`` enforces for that release.
TensorRT 8.6 and 10 only add to this table (8.6, same opset ceiling 17: LayerNormalization,
IsInf, ...; 10.0: opsets 9 to 20, DeformConv, Gelu, ...), so a graph that passes here parses
on every JetPack release: 5.1 (TensorRT 8.5), 6.0 (8.6) and 6.1/6.2 (10.3).

:data:`PLUGIN_OPS` is the one per-version part: ops the parser imports as a plugin layer.
"""

from __future__ import annotations

# Opset range of the default (ai.onnx) domain. 17 is 8.5's ceiling; 9 is the floor the
# TensorRT 10 table states (older opsets use attribute forms the importers dropped).
MIN_OPSET = 9
MAX_OPSET = 17

# Rows marked "Y" in the 8.5 table.
SUPPORTED = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GRU HardSigmoid HardSwish Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu
Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN
RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin
Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Rows marked "N" (kept so the message can say "not supported" rather than "unknown").
UNSUPPORTED = frozenset("""
Bernoulli BitShift BlackmanWindow Compress ConcatFromSequence ConvInteger DFT Det
DynamicQuantizeLinear HammingWindow HannWindow Hardmax IsInf LayerNormalization MatMulInteger
MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional
OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul SequenceAt SequenceConstruct
SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss
SplitToSequence STFT StringNormalizer TfIdfVectorizer Unique
""".split())

# Output shape depends on tensor values. NonZero and NonMaxSuppression parse on 8.5 (the
# latter as a plugin padded to a fixed size), but an engine profile, a tile batch and a
# switch's gather all need shapes known before the data is: refused whatever the version.
DATA_DEPENDENT_SHAPE = frozenset({"NonZero", "NonMaxSuppression", "Unique", "Compress", "StringSplit"})

# Inputs that TensorRT reads as *shape tensors*: they must be computable at build time from
# constants and the input shapes (Shape/Size), never from tensor values. Index -> input slot.
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1,),
    "Resize": (1, 2, 3), "Upsample": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "TopK": (1,), "OneHot": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,),
    "CumSum": (1,), "ReduceSum": (1,),
}

# Table restriction "`X` must be an initializer": op -> input slots that must be constants.
CONSTANT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1,),            # "Weights W must be an initializer" (a DequantizeLinear of one in Q/DQ graphs)
    "ConvTranspose": (1,),
    "Slice": (3,),           # "`axes` must be an initializer"
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "TopK": (1,),            # "`K` input must be an initializer"
    "CumSum": (1,),          # "`axis` must be an initializer"
    "InstanceNormalization": (1, 2),
}

# Resize row: transformation modes, modes and nearest modes the parser maps to IResizeLayer.
RESIZE_COORDINATE_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                     "align_corners"})
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})

# Pad importer: constant -> ISliceLayer kFILL, reflect -> kREFLECT, edge -> kCLAMP; anything
# else ("wrap", opset 19) is "Unsupported pad mode".
PAD_MODES = frozenset({"constant", "reflect", "edge"})

# Pooling and convolution rows: "2D or 3D ... only" (weight rank 4 or 5, input rank 4 or 5).
SPATIAL_RANKS = frozenset({4, 5})

# Per-channel weight quantization axis TensorRT expects: the output-channel axis of the
# weight tensor (KCRS for Conv; ConvTranspose stores C,K,R,S). Gemm/MatMul: see check.py.
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}

# Ops the parser imports as a layer of TensorRT's plugin library rather than a native layer:
# op -> (plugin name, first version, first version without the plugin or None). Source: the
# importers of onnx/onnx-tensorrt at release/8.5-GA, 8.6-GA and 10.1-GA. InstanceNormalization
# is a plugin on 8.x (8.6 goes native only with the parser flag NATIVE_INSTANCENORM, which
# version-compatible engines need), native by default from 10.0; RoiAlign is a plugin in all
# three (later releases are taken to keep it so until their parser says otherwise).
# A plugin layer needs TensorRT's plugins registered before parsing and before deserializing
# (build.tensorrt_logger), and cannot run on DLA.
PLUGIN_OPS: dict[str, tuple[str, tuple[int, int, int], tuple[int, int, int] | None]] = {
    "InstanceNormalization": ("InstanceNormalization_TRT", (8, 0, 0), (10, 0, 0)),
    "RoiAlign": ("ROIAlign_TRT", (8, 0, 0), None),
}


def plugin_for(op: str, version: tuple[int, int, int]) -> str | None:
    """The plugin TensorRT ``version`` imports ``op`` as, or None for a native layer."""
    plugin, first, gone = PLUGIN_OPS.get(op, (None, None, None))
    return plugin if plugin and first <= tuple(version) and (gone is None or tuple(version) < gone) else None
