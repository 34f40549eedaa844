"""The mean of overlapping slide-inference windows in one multi-threaded pass."""
import jittor as jt

from . import enabled

__all__ = ["applies", "slide_merge"]

def _slide_merge_source(k):
    """Kernel for k windows in0..in{k-1} (B, C, h, w) and boxes in{k} (k, 4) int32."""
    windows = ", ".join(f"in{i}_p" for i in range(k))
    return f"""
const int K = {k};
const float* windows[K] = {{{windows}}};
const int* box = in{k}_p;
const int BC = out_shape0 * out_shape1, H = out_shape2, W = out_shape3;
std::vector<float> count((size_t)H * W, 0.f);
for (int i = 0; i < K; i++)
    for (int y = box[4 * i]; y < box[4 * i + 1]; y++)
        for (int x = box[4 * i + 2]; x < box[4 * i + 3]; x++) count[(size_t)y * W + x] += 1.f;
#pragma omp parallel for schedule(static)
for (int p = 0; p < BC; p++) {{
    float* o = out_p + (size_t)p * H * W;
    std::fill(o, o + (size_t)H * W, 0.f);
    for (int i = 0; i < K; i++) {{
        const int y1 = box[4 * i], y2 = box[4 * i + 1], x1 = box[4 * i + 2], x2 = box[4 * i + 3];
        const int w = x2 - x1;
        const float* src = windows[i] + (size_t)p * (y2 - y1) * w;
        for (int y = y1; y < y2; y++) {{
            float* __restrict__ row = o + (size_t)y * W + x1;
            const float* __restrict__ in = src + (size_t)(y - y1) * w;
            #pragma omp simd
            for (int x = 0; x < w; x++) row[x] += in[x];
        }}
    }}
    #pragma omp simd
    for (size_t q = 0; q < (size_t)H * W; q++) o[q] /= count[q];
}}
"""


class _SlideMerge(jt.Function):
    def execute(self, size, boxes, *windows):
        b, c = windows[0].shape[:2]
        self.boxes, self.size = boxes, size
        box_var = jt.array(boxes, "int32").reshape((-1, 4))
        return jt.code((b, c, *size), "float32", [*windows, box_var],
                       cpu_header="#include <vector>\n#include <algorithm>",
                       cpu_src=_slide_merge_source(len(windows)))

    def grad(self, grad_out):
        height, width = self.size
        count = jt.zeros((1, 1, height, width), "float32")
        for y1, y2, x1, x2 in self.boxes:
            count[:, :, y1:y2, x1:x2] += 1
        share = grad_out / count
        return (None, None) + tuple(share[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in self.boxes)


def slide_merge(windows, boxes, size):
    """Mean of overlapping window logits: (B, C, H, W) = per pixel, the sum of the windows
    covering it (in order) divided by their number. windows[i] (B, C, y2 - y1, x2 - x1) is
    placed at boxes[i] = (y1, y2, x1, x2); every pixel must be covered."""
    return _SlideMerge.apply((int(size[0]), int(size[1])), [list(map(int, b)) for b in boxes],
                             *windows)


def applies(windows):
    """True when `slide_merge` stands in for summing zero-padded windows."""
    return enabled(*windows)
