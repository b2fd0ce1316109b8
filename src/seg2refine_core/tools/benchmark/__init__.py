"""Speed and memory benchmark of both stages, the pipeline and stage-1 training, beside their peers.

Every timing is warm (one untimed call first) and the median of ``repeats`` calls; the models being compared
are timed interleaved (A, B, A, B, ...) and their ratios are medians of the paired ratios, so a load change on
a shared machine hits both sides alike. Models are randomly initialised: speed does not depend on the weights.
Each section records ``cpu_share`` (process CPU time / wall / threads); the printed table warns when it is low.

Modules: :mod:`.config` (what to measure), :mod:`.timing` (interleaved timing, CPU share), :mod:`.flops` (the
project's one FLOP counter), :mod:`.subjects` (the models and input timed), :mod:`.sections` (each measurement),
:mod:`.memory` (peak memory in a fresh process), :mod:`.report` (machine facts and the table), :mod:`.runner`.

Measured (section → key):

* ``stage1``: :func:`~seg2refine_core.inference.stage1.segment_slices` over a ``(z, y, x)`` volume, ms per slice, for
  the four Table 1 variants at width ``w`` (``unet``, ``ag-unet``, ``ag-att-unet``, ``sfanet``);
  ``sfanet_over_unet`` = t_sfanet / t_unet; FLOPs per slice (:func:`.flops.count_flops`: 2 per MAC, plus the
  FFE transforms' analytic count) and the achieved FLOP/s as a fraction of the large-convolution reference.
* ``stage1_profile``: shares of the SFANet forward spent in FFE, CBAM and AG (torch profiler ranges).
* ``stage2``: :func:`~seg2refine_core.inference.stage2.refine_volume` (Gaussian sliding window), s per volume, for the
  Attention-GAN generator at width ``w`` and a MONAI 3D UNet of about the same parameter count (the paper's
  Table 2 "3D-UNet" peer); FLOPs per window and achieved FLOP/s.
* ``pipeline``: :func:`~seg2refine_core.inference.pipeline.run_pipeline` (preprocess + both stages), s per volume.
* ``training``: stage-1 training step (forward, backward, Adam) with the paper's loss, slices per second; with
  ``compile``, SFANet's step through ``torch.compile`` too (``compile_s``: the first, compiling step).
* ``reference``: FLOP/s of one large convolution (3×3, 256→256 channels, 64×64) on the device, the best of
  contiguous and channels-last layouts: a practical ceiling for convolution work there.
* ``memory``: the pipeline in a fresh subprocess: peak host RSS (Linux ``VmHWM`` of the child; not
  ``ru_maxrss``, which after fork+exec can carry the parent's high-water mark) and, on CUDA,
  ``torch.cuda.max_memory_allocated``.
"""

from seg2refine_core.tools.benchmark.config import QUICK, SECTIONS, STAGE1_VARIANTS, BenchmarkConfig
from seg2refine_core.tools.benchmark.flops import FlopCount, count_flops, n_params
from seg2refine_core.tools.benchmark.report import format_table, low_cpu_share_warning
from seg2refine_core.tools.benchmark.runner import run_benchmark
from seg2refine_core.tools.benchmark.subjects import build_generator, build_stage1
from seg2refine_core.tools.benchmark.timing import Timings, cpu_share, paired_ratio, time_interleaved

__all__ = [
    "QUICK", "SECTIONS", "STAGE1_VARIANTS", "BenchmarkConfig", "FlopCount", "Timings", "build_generator",
    "build_stage1", "count_flops", "cpu_share", "format_table", "low_cpu_share_warning", "n_params", "paired_ratio",
    "run_benchmark", "time_interleaved",
]
