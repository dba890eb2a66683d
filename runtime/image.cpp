#include "runtime/image.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <csetjmp>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <iterator>

// jpeglib.h uses FILE and size_t without including what declares them, and jerror.h (the
// warning codes) needs jpeglib.h first: this order, not clang-format's.
// clang-format off
#include <cstdio>
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
#include <png.h>
#include <zlib.h>

#include "runtime/error.h"

namespace qsweep {
namespace {

// ---------------------------------------------------------------- JPEG

struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {};
};

extern "C" void jpeg_fail(j_common_ptr c) {
  auto* e = reinterpret_cast<JpegError*>(c->err);
  (*c->err->format_message)(c, e->message);
  std::longjmp(e->jump, 1);
}

// Warnings (corrupt-data notes libjpeg recovers from) are not errors, as in Pillow; a file that
// ends early is (Pillow: "image file is truncated").
extern "C" void jpeg_note(j_common_ptr c, int level) {
  if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) jpeg_fail(c);
}

// Pillow refuses images of more than 2 x Image.MAX_IMAGE_PIXELS pixels as decompression bombs.
constexpr int64_t kMaxPixels = 2 * int64_t{89478485};

// Decodes into `img` (`line`: a CMYK row's scratch); false with `error` set when libjpeg gives
// up or the image is too large. No C++ object with a destructor is created in this frame
// between setjmp and longjmp: the objects it fills belong to the caller.
bool decode_into(const std::vector<uint8_t>& data, Image8& img, std::vector<uint8_t>& line, std::string& error) {
  jpeg_decompress_struct cinfo;
  JpegError jerr;
  cinfo.err = jpeg_std_error(&jerr.mgr);
  jerr.mgr.error_exit = jpeg_fail;
  jerr.mgr.emit_message = jpeg_note;
  if (setjmp(jerr.jump)) {
    jpeg_destroy_decompress(&cinfo);
    error = jerr.message;
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data.data(), static_cast<unsigned long>(data.size()));
  jpeg_read_header(&cinfo, TRUE);
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  const bool gray = cinfo.jpeg_color_space == JCS_GRAYSCALE;
  cinfo.out_color_space = cmyk ? JCS_CMYK : gray ? JCS_GRAYSCALE : JCS_RGB;
  if (static_cast<int64_t>(cinfo.image_width) * cinfo.image_height > kMaxPixels) {
    error =
        fmt::format("{}x{} pixels, more than the {} Pillow accepts", cinfo.image_width, cinfo.image_height, kMaxPixels);
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_start_decompress(&cinfo);
  const int comps = cinfo.output_components;
  line.resize(static_cast<size_t>(cinfo.output_width) * comps);
  img.width = static_cast<int>(cinfo.output_width);
  img.height = static_cast<int>(cinfo.output_height);
  img.channels = gray ? 1 : 3;
  img.px.assign(static_cast<size_t>(img.width) * img.height * img.channels, 0);
  while (cinfo.output_scanline < cinfo.output_height) {
    const int y = static_cast<int>(cinfo.output_scanline);
    JSAMPROW rows[1] = {cmyk ? line.data() : img.row(y)};
    jpeg_read_scanlines(&cinfo, rows, 1);
    if (cmyk) {
      // Pillow reads CMYK JPEGs as Adobe's inverted CMYK ("CMYK;I") and converts to RGB with
      // nk = 255 - k, v = nk - MULDIV255(c, nk) (Convert.c, cmyk2rgb).
      uint8_t* out = img.row(y);
      for (int x = 0; x < img.width; ++x) {
        const int nk = 255 - (255 - line[x * 4 + 3]);
        for (int ch = 0; ch < 3; ++ch) {
          const int c = 255 - line[x * 4 + ch];
          const int t = c * nk + 128;
          const int v = nk - (((t >> 8) + t) >> 8);
          out[x * 3 + ch] = static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
        }
      }
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return true;
}

// ---------------------------------------------------------------- Pillow's resampling

constexpr int kPrecisionBits = 32 - 8 - 2;

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;  // per output pixel: first input pixel, count
  std::vector<int32_t> kk;  // per output pixel: ksize fixed-point weights
};

// Resample.c, precompute_coeffs + normalize_coeffs_8bpc, for the bilinear filter (support 1)
// over the whole input [0, in_size).
Coeffs precompute(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 1.0 * filterscale;
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(static_cast<size_t>(out_size) * 2);
  c.kk.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(static_cast<size_t>(c.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      double t = (x + xmin - center + 0.5) * ss;
      if (t < 0.0) t = -t;
      const double w = t < 1.0 ? 1.0 - t : 0.0;
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[x] /= ww;
      const double v = k[x] * (1 << kPrecisionBits);
      c.kk[static_cast<size_t>(xx) * c.ksize + x] = static_cast<int32_t>(v < 0 ? -0.5 + v : 0.5 + v);
    }
    c.bounds[xx * 2] = xmin;
    c.bounds[xx * 2 + 1] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  const int32_t s = v >> kPrecisionBits;  // arithmetic shift: floor
  return static_cast<uint8_t>(s < 0 ? 0 : s > 255 ? 255 : s);
}

}  // namespace

namespace {

std::vector<uint8_t> read_image_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) user_error("image file '{}' cannot be read", path);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

Image8 jpeg_from(const std::vector<uint8_t>& data, const std::string& path) {
  Image8 img;
  std::vector<uint8_t> line;
  std::string error;
  if (!decode_into(data, img, line, error)) user_error("{}: not a readable JPEG image ({})", path, error);
  return img;
}

// ---------------------------------------------------------------- PNG

struct PngSource {
  const std::vector<uint8_t>* data;
  size_t pos;
};

struct PngError {
  std::jmp_buf jump;
  char message[400];
  volatile bool image_read;  // every row decoded: what fails after (png_read_end) is ignored
};

extern "C" void png_fail(png_structp png, png_const_charp msg) {
  auto* e = static_cast<PngError*>(png_get_error_ptr(png));
  std::snprintf(e->message, sizeof e->message, "%s", msg);
  std::longjmp(e->jump, 1);
}

// Warnings (a known-wrong sRGB profile, an unknown chunk) are not errors; Pillow reads such
// files too.
extern "C" void png_note(png_structp, png_const_charp) {}

extern "C" void png_read_memory(png_structp png, png_bytep out, png_size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > src->data->size() - src->pos) png_error(png, "the file ends early (truncated)");
  std::memcpy(out, src->data->data() + src->pos, n);
  src->pos += n;
}

// Decodes into `img` as Pillow's convert("RGB") (or its L image) gives it: palettes expanded,
// 1/2/4-bit gray scaled to 8 bits (x 255, 85, 17), 16-bit samples cut to their high byte,
// alpha and tRNS transparency dropped, Adam7 interlacing undone; gamma, sBIT and colour
// profiles ignored. What Pillow does not check is not checked either: IDAT's CRCs and what
// follows the image data (a missing IEND, a damaged chunk after it); png_from checks the CRCs
// Pillow does, before the image data. `rows`: the caller's row pointers. As decode_into: no object with a
// destructor lives in this frame between setjmp and longjmp, and the pointers the handler
// reads are set before setjmp.
bool decode_png_into(const std::vector<uint8_t>& data, Image8& img, std::vector<png_bytep>& rows, std::string& error) {
  PngError err{};
  PngSource src{&data, 0};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_fail, png_note);
  if (png == nullptr) {
    error = "libpng could not start";
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    error = "out of memory";
    return false;
  }
  if (setjmp(err.jump)) {
    png_destroy_read_struct(&png, &info, nullptr);
    if (err.image_read) return true;
    error = err.message;
    return false;
  }
  png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);  // checked above where Pillow does
  // Nor does Pillow check the zlib stream's checksum: it stops once every row is decoded.
  png_set_option(png, PNG_IGNORE_ADLER32, PNG_OPTION_ON);
  png_set_read_fn(png, &src, png_read_memory);
  png_read_info(png, info);
  const png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
  const int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  if (static_cast<int64_t>(width) * height > kMaxPixels) {
    std::snprintf(err.message, sizeof err.message, "%ux%u pixels, more than the %lld Pillow accepts",
                  static_cast<unsigned>(width), static_cast<unsigned>(height), static_cast<long long>(kMaxPixels));
    std::longjmp(err.jump, 1);
  }
  if (color == PNG_COLOR_TYPE_GRAY && depth == 16) {
    png_error(png,
              "16-bit grayscale: Pillow reads it as 32-bit integers and convert(\"RGB\") clips every value above "
              "255, so torchvision would see a nearly white image; convert it to 8 bits");
  }
  png_set_expand(png);
  png_set_strip_16(png);
  png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  img.width = static_cast<int>(width);
  img.height = static_cast<int>(height);
  img.channels = png_get_channels(png, info) == 1 ? 1 : 3;
  if (static_cast<int>(png_get_channels(png, info)) != img.channels || png_get_bit_depth(png, info) != 8) {
    png_error(png, "an unexpected layout after libpng's transforms");
  }
  img.px.assign(static_cast<size_t>(img.width) * img.height * img.channels, 0);
  rows.resize(static_cast<size_t>(img.height));
  for (int y = 0; y < img.height; ++y) rows[y] = img.row(y);
  png_read_image(png, rows.data());
  err.image_read = true;
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

Image8 png_from(const std::vector<uint8_t>& data, const std::string& path) {
  static constexpr uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (data.size() < 8 || !std::equal(kSignature, kSignature + 8, data.begin())) {
    std::string start;
    for (size_t i = 0; i < std::min<size_t>(data.size(), 4); ++i) start += fmt::format(" 0x{:02x}", data[i]);
    user_error("{}: not a readable PNG image (Not a PNG file: {})", path,
               data.empty() ? std::string("it is empty") : "starts with" + start);
  }
  // One walk over the chunks. Pillow checks the CRC of every chunk before the image data (and
  // of none after): so here. A file cut inside its last IDAT's CRC: Pillow reads it, libpng
  // reads the CRC bytes, so they are supplied (as zeros). A cut into a chunk's data is left to
  // libpng to refuse: the pixels may be missing (Pillow reads a file that lost only the zlib
  // stream's 4-byte checksum; qsweep refuses it).
  const auto be32 = [&](size_t at) {
    return (uint32_t{data[at]} << 24) | (uint32_t{data[at + 1]} << 16) | (uint32_t{data[at + 2]} << 8) |
           uint32_t{data[at + 3]};
  };
  const std::vector<uint8_t>* source = &data;
  std::vector<uint8_t> padded;
  bool image_data = false;
  for (size_t at = 8; at + 8 <= data.size();) {
    const uint32_t length = be32(at);
    const std::string type(data.begin() + at + 4, data.begin() + at + 8);
    const size_t end = at + 12 + static_cast<size_t>(length);
    image_data = image_data || type == "IDAT";
    if (end > data.size()) {
      if (type == "IDAT" && data.size() >= end - 4) {
        padded.assign(data.begin(), data.end());
        padded.resize(end, 0);
        source = &padded;
      }
      break;
    }
    if (!image_data && crc32(crc32(0L, Z_NULL, 0), data.data() + at + 4, length + 4) != be32(end - 4)) {
      user_error("{}: not a readable PNG image (the {} chunk's CRC does not match: the file is damaged)", path, type);
    }
    at = end;
  }
  Image8 img;
  std::vector<png_bytep> rows;
  std::string error;
  if (!decode_png_into(*source, img, rows, error)) user_error("{}: not a readable PNG image ({})", path, error);
  return img;
}

bool starts_with(const std::vector<uint8_t>& data, std::initializer_list<uint8_t> magic) {
  return data.size() >= magic.size() && std::equal(magic.begin(), magic.end(), data.begin());
}

bool has_png_extension(const std::string& path) {
  if (path.size() < 4) return false;
  std::string ext = path.substr(path.size() - 4);
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext == ".png";
}

}  // namespace

Image8 decode_jpeg(const std::string& path) { return jpeg_from(read_image_file(path), path); }

Image8 decode_png(const std::string& path) { return png_from(read_image_file(path), path); }

Image8 decode_image(const std::string& path) {
  const std::vector<uint8_t> data = read_image_file(path);
  if (starts_with(data, {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'})) return png_from(data, path);
  if (starts_with(data, {0xff, 0xd8, 0xff})) return jpeg_from(data, path);
  // Neither signature: the decoder the extension names says what is wrong.
  return has_png_extension(path) ? png_from(data, path) : jpeg_from(data, path);
}

Image8 to_rgb(const Image8& in) {
  if (in.channels == 3) return in;
  Image8 out{in.width, in.height, 3, std::vector<uint8_t>(in.px.size() * 3)};
  for (size_t i = 0; i < in.px.size(); ++i) out.px[i * 3] = out.px[i * 3 + 1] = out.px[i * 3 + 2] = in.px[i];
  return out;
}

Image8 to_gray(const Image8& in) {
  if (in.channels == 1) return in;
  Image8 out{in.width, in.height, 1, std::vector<uint8_t>(in.px.size() / 3)};
  for (size_t i = 0; i < out.px.size(); ++i) {
    const uint8_t* p = &in.px[i * 3];
    out.px[i] = static_cast<uint8_t>((p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16);
  }
  return out;
}

Image8 resize_bilinear(const Image8& in, int width, int height) {
  if (width == in.width && height == in.height) return in;
  const int C = in.channels;
  const Coeffs h = precompute(in.width, width), v = precompute(in.height, height);
  // The horizontal pass covers only the rows the vertical one reads.
  const int y_first = v.bounds[0];
  const int y_last = v.bounds[(height - 1) * 2] + v.bounds[(height - 1) * 2 + 1];
  Image8 tmp;
  const Image8* src = &in;
  int row_offset = 0;  // the vertical pass's input row of input row y: y - row_offset
  if (width != in.width) {
    tmp = Image8{width, y_last - y_first, C, std::vector<uint8_t>(static_cast<size_t>(width) * (y_last - y_first) * C)};
    for (int yy = 0; yy < tmp.height; ++yy) {
      const uint8_t* row = in.row(yy + y_first);
      uint8_t* out = tmp.row(yy);
      for (int xx = 0; xx < width; ++xx) {
        const int xmin = h.bounds[xx * 2], xmax = h.bounds[xx * 2 + 1];
        const int32_t* k = &h.kk[static_cast<size_t>(xx) * h.ksize];
        for (int c = 0; c < C; ++c) {
          int32_t ss = 1 << (kPrecisionBits - 1);
          for (int x = 0; x < xmax; ++x) ss += row[static_cast<size_t>(x + xmin) * C + c] * k[x];
          out[static_cast<size_t>(xx) * C + c] = clip8(ss);
        }
      }
    }
    src = &tmp;
    row_offset = y_first;
  }
  if (height == in.height) return src == &tmp ? tmp : in;
  Image8 out{width, height, C, std::vector<uint8_t>(static_cast<size_t>(width) * height * C)};
  for (int yy = 0; yy < height; ++yy) {
    const int ymin = v.bounds[yy * 2] - row_offset, ymax = v.bounds[yy * 2 + 1];
    const int32_t* k = &v.kk[static_cast<size_t>(yy) * v.ksize];
    uint8_t* o = out.row(yy);
    for (size_t i = 0; i < static_cast<size_t>(width) * C; ++i) {
      int32_t ss = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < ymax; ++y) ss += src->row(y + ymin)[i] * k[y];
      o[i] = clip8(ss);
    }
  }
  return out;
}

std::pair<int64_t, int64_t> shorter_side_size(int width, int height, int size) {
  const bool wide = width > height;  // torchvision: (w, h) short/long as w <= h
  const int64_t shorter = wide ? height : width, longer = wide ? width : height;
  const auto new_long = static_cast<int64_t>(static_cast<double>(size * longer) / static_cast<double>(shorter));
  return wide ? std::pair<int64_t, int64_t>{new_long, size} : std::pair<int64_t, int64_t>{size, new_long};
}

Image8 resize_shorter(const Image8& in, int size) {
  const auto [w, h] = shorter_side_size(in.width, in.height, size);
  return resize_bilinear(in, static_cast<int>(w), static_cast<int>(h));
}

Image8 center_crop(const Image8& in, int height, int width) {
  const Image8* src = &in;
  Image8 padded;
  if (width > in.width || height > in.height) {
    const int left = width > in.width ? (width - in.width) / 2 : 0;
    const int top = height > in.height ? (height - in.height) / 2 : 0;
    const int right = width > in.width ? (width - in.width + 1) / 2 : 0;
    const int bottom = height > in.height ? (height - in.height + 1) / 2 : 0;
    padded = Image8{in.width + left + right, in.height + top + bottom, in.channels, {}};
    padded.px.assign(static_cast<size_t>(padded.width) * padded.height * in.channels, 0);
    for (int y = 0; y < in.height; ++y) {
      std::copy(in.row(y), in.row(y) + static_cast<size_t>(in.width) * in.channels,
                padded.row(y + top) + static_cast<size_t>(left) * in.channels);
    }
    src = &padded;
  }
  // Python's round(): halves to even, as nearbyint does in the default rounding mode.
  const int top = static_cast<int>(std::nearbyint((src->height - height) / 2.0));
  const int left = static_cast<int>(std::nearbyint((src->width - width) / 2.0));
  Image8 out{width, height, in.channels, std::vector<uint8_t>(static_cast<size_t>(width) * height * in.channels)};
  for (int y = 0; y < height; ++y) {
    const uint8_t* r = src->row(y + top) + static_cast<size_t>(left) * in.channels;
    std::copy(r, r + static_cast<size_t>(width) * in.channels, out.row(y));
  }
  return out;
}

}  // namespace qsweep
