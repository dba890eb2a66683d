# Sums a oneDNN verbose trace's convolution executions by shape and prints, per shape, the
# calls, the time, and the rate in GFLOP/s counting only the kernel taps that land inside the
# input (the arithmetic no implementation can skip) and counting every tap (padding too).
# Times are summed over all threads, so a rate is per thread.
#
#   ONEDNN_VERBOSE=1 build/bench/qsweep_bench_grid --skip-naive --skip-torch --repeat 1 --images 2000 \
#     | awk -F, -f scripts/onednn_conv_digest.awk
#
# Only the executions with a batch of more than one image are counted (the one-image forward
# that sizes the benchmark's FLOP count is left out).

# Taps inside an input of `size` pixels, summed over `out` outputs (kernel k, stride s,
# dilation d as oneDNN writes it, i.e. 0 for none, padding p before).
function inside(size, out, k, s, d, p,    o, t, i, n) {
  n = 0
  for (o = 0; o < out; o++)
    for (t = 0; t < k; t++) {
      i = o * s - p + t * (d + 1)
      if (i >= 0 && i < size) n++
    }
  return n
}

# The number after `key` in a oneDNN problem string such as mb250_ic64oc64_ih4oh4kh3sh1dh0ph1.
function field(str, key,    m) {
  if (match(str, key "[0-9]+")) return substr(str, RSTART + length(key), RLENGTH - length(key)) + 0
  return -1
}

$1 == "onednn_verbose" && $2 == "exec" && $4 == "convolution" {
  shape = $(NF - 1)
  mb = field(shape, "mb")
  if (mb <= 1) next
  ms[shape] += $NF
  calls[shape]++
  total += $NF
}

END {
  printf "%-60s %6s %9s %6s %13s %13s\n", "shape", "calls", "ms", "share", "GFLOP/s inside", "all taps"
  for (shape in ms) {
    g = field(shape, "g"); if (g < 1) g = 1
    mb = field(shape, "mb"); ic = field(shape, "ic"); oc = field(shape, "oc")
    ih = field(shape, "ih"); oh = field(shape, "oh"); kh = field(shape, "kh"); sh = field(shape, "sh")
    dh = field(shape, "dh"); ph = field(shape, "ph")
    iw = field(shape, "iw"); ow = field(shape, "ow"); kw = field(shape, "kw"); sw = field(shape, "sw")
    dw = field(shape, "dw"); pw = field(shape, "pw")
    if (kw < 0) { iw = 1; ow = 1; kw = 1; sw = 1; dw = 0; pw = 0 }
    per_tap = 2.0 * mb * oc * (ic / g)
    fin = per_tap * inside(ih, oh, kh, sh, dh, ph) * inside(iw, ow, kw, sw, dw, pw) * calls[shape]
    fall = per_tap * oh * ow * kh * kw * calls[shape]
    printf "%-60s %6d %9.1f %5.1f%% %13.1f %13.1f\n", shape, calls[shape], ms[shape], 100 * ms[shape] / total,
           fin / (ms[shape] * 1e6), fall / (ms[shape] * 1e6)
  }
  printf "total convolution time: %.1f ms\n", total
}
