// 8-bit images for image-folder datasets: JPEG and PNG decoding (libjpeg-turbo, libpng) and the evaluation
// transforms of torchvision on PIL images, bit for bit:
//   ImageFolder's loader      Image.open(f).convert("RGB")        decode_jpeg + to_rgb
//   transforms.Grayscale()    img.convert("L")                    to_gray
//   transforms.Resize(s)      shorter side to s, PIL bilinear     resize_shorter
//   transforms.CenterCrop(c)  round-half-even offsets, 0-padding  center_crop
// (Pillow's 8-bit resampling: separable, antialiased, horizontal pass first, 22-bit fixed
// point coefficients, each pass rounded and clamped to 8 bits.)
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qsweep {

struct Image8 {
  int width = 0, height = 0, channels = 0;  // channels 1 (L) or 3 (RGB)
  std::vector<uint8_t> px;                  // (height, width, channels), interleaved

  uint8_t* row(int y) { return px.data() + static_cast<size_t>(y) * width * channels; }
  const uint8_t* row(int y) const { return px.data() + static_cast<size_t>(y) * width * channels; }
};

// Decodes a JPEG file as Pillow does (integer IDCT, fancy upsampling): grayscale files to 1
// channel, YCbCr/RGB ones to 3, CMYK/YCCK ones (Adobe, inverted) converted to RGB with
// Pillow's formula. Throws UserError naming the file when it is not a readable JPEG.
Image8 decode_jpeg(const std::string& path);

// Decodes a PNG file as Pillow's Image.open(f).convert("RGB") gives it (gray files stay 1
// channel: their RGB is the value thrice): palettes expanded, 1/2/4-bit gray scaled to 8
// bits, 16-bit samples cut to the high byte, alpha and tRNS dropped (not composited), Adam7
// undone, gamma and colour profiles ignored. 16-bit grayscale files are refused: Pillow reads
// them as 32-bit integers and clips at 255 (a nearly white image). Throws UserError naming
// the file when it is not a readable PNG.
Image8 decode_png(const std::string& path);

// A JPEG or PNG file, told apart by its first bytes (as Pillow does, whatever the extension);
// with neither signature, the error of the decoder its extension names.
Image8 decode_image(const std::string& path);

// PIL's convert("RGB") of an L image (the value thrice) and convert("L") of an RGB one
// (L = (19595 R + 38470 G + 7471 B + 32768) >> 16). Either is a copy when nothing changes.
Image8 to_rgb(const Image8& in);
Image8 to_gray(const Image8& in);

// PIL's Image.resize((width, height), Image.BILINEAR).
Image8 resize_bilinear(const Image8& in, int width, int height);

// torchvision's Resize(size) for an int: the shorter side becomes `size`, the longer
// int(size * long / short); unchanged when that is the image's size.
Image8 resize_shorter(const Image8& in, int size);
// The (width, height) resize_shorter gives a width x height image.
std::pair<int64_t, int64_t> shorter_side_size(int width, int height, int size);

// torchvision's CenterCrop((height, width)): zero-padded first where the image is smaller.
Image8 center_crop(const Image8& in, int height, int width);

}  // namespace qsweep
