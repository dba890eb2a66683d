// Import-time folding of the parts of an ONNX graph that compute shapes and pad amounts from
// constants. torch.onnx.export writes F.pad / nn.ZeroPad2d's pads as ConstantOfShape -> Concat
// -> Reshape -> Slice -> Transpose -> Reshape -> Cast on constants, and x.view(x.size(0), -1)
// as Shape -> Gather -> Unsqueeze -> Concat feeding a Reshape: qsweep runs neither kind of op,
// but the values are known before any image is seen (the batch size aside, which a Reshape
// copies with 0).
#pragma once

#include <onnx/onnx_pb.h>

namespace qsweep {

// Replaces every node of Constant, ConstantOfShape, Shape, Gather, Unsqueeze, Squeeze, Concat,
// Reshape, Slice, Transpose, Cast, Identity, Add, Sub or Mul whose inputs are all known
// (constants, or a Shape of a value whose dimensions after the batch shape inference knows;
// arithmetic never on the batch size) by an initializer
// holding its output, where every such output that a remaining node reads can be written as
// a constant: a batch size in it only as the first entry of a Reshape's shape (then 0, "copy
// the input's dimension"). Otherwise the model is left as it was. Returns the nodes removed.
int fold_shape_computations(onnx::ModelProto& model);

}  // namespace qsweep
