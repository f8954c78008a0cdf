r"""The same bits on every machine: one numerical profile for every computation that counts.

Why a profile is needed (measured on the project machine, issue #20; see
``docs/reproducibility.md``). On CPU, the *bits* of a float32 result depend on which kernel
computes it and on how the kernel splits a reduction over threads, and the libraries choose
both from the machine:

* **MKL** (``torch.mm``/``nn.Linear``): the sgemm of the embedding head (K = 1280) rounds
  differently with 1 and 2 threads and on the AVX2 and AVX-512 code branches.
* **oneDNN** (convolutions): the backward-weights reduction of the early, large-spatial
  convolutions is split over threads (13 of the 52 weight gradients of EfficientNet-Lite0
  differ between 1 and 2 threads even with MKL pinned), and the AVX2 and AVX-512 kernels
  give different gradients. oneDNN promises run-to-run identical bits only "for a fixed
  environment" (same hardware, threads, ISA).
* **OpenBLAS in faiss** (the exact kNN search): ``DYNAMIC_ARCH`` picks the sgemm kernel from
  the CPU model (SkylakeX here; Haswell on AVX2 machines; Cooperlake, Zen ...), and some
  kernels also change with the thread count. The scores move by an ulp, near-tied
  neighbours swap, and MAP@R moves in the 5th significant digit while R@1 stays: the
  symptom of issue #20.

A training run amplifies any first difference (1 vs 2 threads: R@1 0.430 vs 0.423 after 3
epochs of the same run), so each of these must be pinned, not merely "small". The profile
(:data:`PROFILE_ENV`) pins the code branch of every library to AVX2, the widest ISA every
x86-64 machine of the last decade has, and runs every computation whose bits matter on a
fixed number of threads (:data:`DEFAULT_THREADS`, 1), whatever the machine's core count:

* **MKL**: ``MKL_CBWR=AVX2,STRICT`` (the AVX2 code branch in *strict* conditional numerical
  reproducibility: gemm bits independent of threads and alignment [MKL]) and
  ``MKL_ENABLE_INSTRUCTIONS=AVX2``; ``MKL_DYNAMIC=OMP_DYNAMIC=FALSE`` (the requested thread
  count is used, never lowered at run time [MKL]).
* **oneDNN**: ``ONEDNN_MAX_CPU_ISA=AVX2`` (the AVX2 convolution kernels on every machine)
  and ``ONEDNN_DEFAULT_FPMATH_MODE=STRICT`` (float32 math stays float32).
* **ATen**: ``ATEN_CPU_CAPABILITY=avx2`` (the AVX2 vectorised kernels, 8-lane reductions).
* **OpenBLAS** (faiss' and numpy's): ``OPENBLAS_CORETYPE=SandyBridge`` (one sgemm kernel whose
  bits for a pair do not depend on its place in the call: see ``PROFILE_ENV``).
* **threads** (:func:`apply`): torch's and faiss' intra-op threads = :func:`threads`
  (default 1); IEEE denormals (no flush-to-zero); float32 matmuls in full precision.

[MKL] Intel oneMKL Developer Guide, "Reproducibility Conditions" and "Strict CNR Mode".

The library settings are environment variables read once, when each library initialises, so
they are set by :func:`pin_environment` when :mod:`dml_study` is imported (before torch in
every entry point of the project: the CLIs, ``02_train``'s first cell, the study's worker
processes, which also get them through :func:`pinned_env`). :func:`apply` sets the thread
counts, which can change at any time, and :func:`determinism_report` records what is in
effect in every run's ``provenance.json``. ``DML_STUDY_DETERMINISM`` selects the profile: ``avx2``
(the default), ``avx512`` (faster on AVX-512 CPUs, reproducible only on them, see
:data:`PROFILES`) or ``off`` (the libraries' own choices: not reproducible across machines).
"""

from __future__ import annotations

import ctypes
import os
import warnings
from collections.abc import Mapping
from typing import Any

#: Which profile: ``avx2`` (default; ``on`` is a synonym), ``avx512`` or ``off``.
SWITCH_ENV = "DML_STUDY_DETERMINISM"

#: Intra-op threads of every computation whose bits matter (training, feature extraction,
#: evaluation). One thread: the study parallelises over runs instead (``max_parallel``).
DEFAULT_THREADS = 1

#: Overrides :data:`DEFAULT_THREADS` (the launchers set it with ``threads_per_run``). The
#: bits of a run are reproduced with the same value, recorded in its ``provenance.json``.
THREADS_ENV = "DML_STUDY_THREADS"

#: The library settings of the default profile (read by each library when it initialises).
PROFILE_ENV: dict[str, str] = {
    "MKL_CBWR": "AVX2,STRICT",
    # Also pinned: a different MKL_ENABLE_INSTRUCTIONS overrides the CBWR branch (measured:
    # AVX512 gives the AVX512 bits although mkl_cbwr_get still reports AVX2).
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",  # the variable's name before oneDNN 2.x
    "ONEDNN_DEFAULT_FPMATH_MODE": "STRICT",  # no implicit bf16/tf32 down-conversion
    "ATEN_CPU_CAPABILITY": "avx2",
    # SandyBridge, not Haswell: its sgemm gives a (query, item) pair the same bits wherever
    # the pair sits in the call (measured: knn_fast.blas_regime holds for SandyBridge and
    # SkylakeX, fails for Haswell, Zen, Cooperlake), which the exact two-pass re-rank needs.
    # AVX only, so it runs on every AVX2 machine; exact search costs 1.24x Haswell here.
    "OPENBLAS_CORETYPE": "SandyBridge",
}

#: Every profile: ``avx2`` reproduces on every x86-64 CPU with AVX2 and FMA (Intel since
#: 2013, AMD since 2015); ``avx512`` is faster on AVX-512 CPUs (1.3-1.5x per training step,
#: measured) and reproduces only on them (Intel Skylake-SP and later, AMD Zen 4 and later).
PROFILES: dict[str, dict[str, str]] = {
    "avx2": PROFILE_ENV,
    "avx512": {**PROFILE_ENV, "MKL_CBWR": "AVX512,STRICT", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "DNNL_MAX_CPU_ISA": "AVX512_CORE",
               "ATEN_CPU_CAPABILITY": "avx512", "OPENBLAS_CORETYPE": "SkylakeX"},
}

#: Thread-count variables of a child process (torch, OpenMP, MKL and OpenBLAS read them).
THREAD_VARS: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: oneMKL ``mkl_cbwr_get`` branch codes (mkl_service.h) -> names.
_MKL_BRANCHES = {0: "OFF", 1: "BRANCH_OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3",
                 7: "SSE4_1", 8: "SSE4_2", 9: "AVX", 10: "AVX2", 12: "AVX512",
                 14: "AVX512_E1", 15: "AVX512_E2", 16: "AVX512_E3", 17: "AVX512_E4",
                 18: "AVX2_E1", 19: "AVX512_E5"}


def profile_name(environ: Mapping[str, str] | None = None) -> str:
    """The profile selected by ``$DML_STUDY_DETERMINISM``: ``avx2``, ``avx512`` or ``off``."""
    raw = (environ if environ is not None else os.environ).get(SWITCH_ENV, "").strip().lower()
    if raw in ("", "on", "1", "true", "yes"):
        return "avx2"
    if raw in ("off", "0", "false", "no"):
        return "off"
    if raw not in PROFILES:
        raise ValueError(f"{SWITCH_ENV}={raw!r} is not a profile; choose one of "
                         f"{', '.join([*PROFILES, 'off'])}")
    return raw


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a profile is on (``DML_STUDY_DETERMINISM`` is not ``off``)."""
    return profile_name(environ) != "off"


def profile_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The library settings of the selected profile (empty when it is ``off``)."""
    name = profile_name(environ)
    return {} if name == "off" else dict(PROFILES[name])


def threads(environ: Mapping[str, str] | None = None) -> int:
    """The profile's thread count: ``$DML_STUDY_THREADS``, else :data:`DEFAULT_THREADS`."""
    raw = (environ if environ is not None else os.environ).get(THREADS_ENV, "").strip()
    if not raw:
        return DEFAULT_THREADS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, got {raw!r}")
    return value


def pinned_env(num_threads: int | None = None) -> dict[str, str]:
    """Environment variables of a child process that runs under the profile.

    ``num_threads`` (default: :func:`threads`) sets the thread variables and
    ``DML_STUDY_THREADS``. With the profile off only an explicit ``num_threads`` is set (the
    launchers' behaviour before the profile); ``None`` then leaves threads to the machine.
    """
    if not enabled():
        return {} if num_threads is None else {v: str(num_threads) for v in THREAD_VARS}
    n = threads() if num_threads is None else int(num_threads)
    return {**{var: str(n) for var in THREAD_VARS}, THREADS_ENV: str(n), **profile_env()}


def pin_environment() -> list[str]:
    """Set the profile's settings in ``os.environ`` (when :mod:`dml_study` is imported).

    Returns the variables that were set to a different value before (the profile wins:
    a machine-specific choice is exactly what it removes). Libraries already initialised in
    this process keep their choice; :func:`determinism_report` shows what is in effect.
    """
    if not enabled():
        return []
    env = profile_env()
    changed = [k for k, v in env.items() if os.environ.get(k) not in (None, v)]
    os.environ.update(env)
    return changed


def apply(num_threads: int | None = None) -> dict[str, Any]:
    """Run this process's numerics under the profile from now on; returns the report.

    Sets torch's and faiss' intra-op threads to ``num_threads`` (default: :func:`threads`)
    and IEEE denormals, and warns
    (once per reason) when a library setting could not take effect because the library was
    initialised before :mod:`dml_study` was imported. What this CPU cannot honour
    (``unsupported``) is not warned about: it would be one more line on every command's
    output, for a fact of the machine that the user cannot fix; it is recorded in every
    run's ``provenance.json`` and in the study index. A no-op (besides the report) with
    ``DML_STUDY_DETERMINISM=off``.
    """
    if not enabled():
        return determinism_report()
    n = threads() if num_threads is None else int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    pin_environment()
    import torch

    torch.set_num_threads(n)
    torch.set_flush_denormal(False)
    torch.set_float32_matmul_precision("highest")
    faiss = _faiss()
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    report = determinism_report()
    for problem in report["unpinned"]:  # what the user can fix; ``unsupported`` is the
        _warn_once(problem)              # CPU's, recorded (provenance.json), not warned
    return report


def determinism_report() -> dict[str, Any]:
    """What decides the bits in this process: profile, threads and each library's branch.

    ``unpinned`` lists every setting of the profile that is not in effect although it could
    be (a library initialised too early); ``unsupported`` every setting this CPU cannot honour
    (:func:`_unsupported`). Both are empty when the run is reproducible on another machine
    with the same package versions; with only ``unsupported`` entries it reproduces on this
    machine, and on machines of the same CPU, at the same threads.
    """
    import torch

    report: dict[str, Any] = {
        "profile": profile_name(),
        "torch_threads": torch.get_num_threads(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        **_mkl_info(),
        **_openblas_info(),
        "cpu": cpu_model(),
    }
    faiss = _faiss()
    report["faiss_threads"] = faiss.omp_get_max_threads() if faiss is not None else None
    report["unpinned"] = _unpinned(report) if enabled() else []
    report["unsupported"] = _unsupported(report) if enabled() else []
    return report


def mkl_cnr_unsupported(report: Mapping[str, Any]) -> bool:
    """True when MKL has no conditional-numerical-reproducibility branch for this CPU.

    MKL's CNR branches (``MKL_CBWR=AVX2``...) are code paths for Intel processors; on others
    (measured: an AMD EPYC with AVX2 and AVX-512) ``mkl_cbwr_get_auto_branch`` answers
    ``AUTO`` and ``MKL_CBWR`` is ignored, so ``mkl_cbwr_get`` answers ``AUTO`` too, however
    early MKL was pinned. On an Intel CPU the automatic branch is a named one (``AVX2``,
    ``AVX512``...), so a mismatch there is a late initialisation (:func:`_unpinned`).
    """
    return report.get("mkl_cbwr_branch") is not None and report.get("mkl_auto_branch") == "AUTO"


def _unsupported(report: Mapping[str, Any]) -> list[str]:
    """The profile's settings this CPU cannot honour, each as a sentence with what follows."""
    problems = []
    if mkl_cnr_unsupported(report):
        name = cpu_name(report.get("cpu"))
        problems.append(
            f"MKL has no reproducible (CNR) code branch for this CPU ({name or 'not Intel'}), "
            f"so MKL_CBWR={profile_env()['MKL_CBWR']} cannot pin its sgemm (results still "
            "repeat on this machine at the same threads; docs/reproducibility.md)")
    return problems


def _unpinned(report: Mapping[str, Any]) -> list[str]:
    """The profile's settings not in effect, each as a sentence naming cause and fix."""
    env, problems = profile_env(), []
    late = "it was initialised before dml_study was imported: import dml_study first"
    want = env["ATEN_CPU_CAPABILITY"]
    if str(report["aten_cpu_capability"]).lower() != want:
        problems.append(f"ATen uses {report['aten_cpu_capability']} kernels, not {want} ({late}, "
                        f"or set ATEN_CPU_CAPABILITY={want}; or this CPU lacks {want})")
    branch, want = report.get("mkl_cbwr_branch"), env["MKL_CBWR"].split(",")[0]
    if branch is not None and branch != want and not mkl_cnr_unsupported(report):
        problems.append(f"MKL runs its {branch} branch, not {want} ({late}, or set "
                        f"MKL_CBWR={env['MKL_CBWR']})")
    core, want = report.get("openblas_core"), env["OPENBLAS_CORETYPE"]
    if core is not None and core.lower() != want.lower():
        problems.append(f"faiss' OpenBLAS uses the {core} kernel, not {want} ({late}, or set "
                        f"OPENBLAS_CORETYPE={want})")
    for var in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        if os.environ.get(var) != env[var]:
            problems.append(f"{var} is not {env[var]}: set it before torch is imported")
    return problems


_WARNED: set[str] = set()


def _warn_once(problem: str) -> None:
    if problem not in _WARNED:
        _WARNED.add(problem)
        warnings.warn(f"dml_study.determinism: {problem}; the bits of this run may differ on "
                      "another machine", RuntimeWarning, stacklevel=3)


def _faiss() -> Any:
    """faiss if it is importable (the evaluation's kNN search), else None."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss is a dependency
        return None
    return faiss


def _loaded_library(*fragments: str) -> str | None:
    """Path of the first shared library mapped into this process whose path has every one
    of ``fragments``."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.split()[-1]
                if path.startswith("/") and all(f in path for f in fragments):
                    return path
    except OSError:  # not Linux
        return None
    return None


def _mkl_info() -> dict[str, Any]:
    """MKL's version, the CNR branch in effect and the branch it would pick on this CPU.

    Read through MKL's service functions linked into ``libtorch_cpu`` (``None`` when absent:
    a torch build without MKL).
    """
    out: dict[str, Any] = {"mkl_version": None, "mkl_cbwr_branch": None, "mkl_auto_branch": None}
    path = _loaded_library("libtorch_cpu")
    if path is None:
        return out
    try:
        lib = ctypes.CDLL(path)
        get, auto = lib.mkl_serv_cbwr_get, lib.mkl_serv_cbwr_get_auto_branch
        version = ctypes.create_string_buffer(256)
        lib.MKL_Get_Version_String(version, 256)
    except (OSError, AttributeError):
        return out
    get.restype = auto.restype = ctypes.c_int
    import torch

    torch.mm(torch.ones(2, 2), torch.ones(2, 2))  # MKL reads MKL_CBWR on its first call
    branch = get(1)  # MKL_CBWR_BRANCH
    out["mkl_version"] = version.value.decode(errors="replace").split(" for ")[0]
    out["mkl_cbwr_branch"] = _MKL_BRANCHES.get(branch, str(branch))
    out["mkl_auto_branch"] = _MKL_BRANCHES.get(auto(), str(auto()))
    return out


def _openblas_info() -> dict[str, Any]:
    """The OpenBLAS kernel faiss' bundled OpenBLAS selected (``None`` before faiss loads)."""
    if _faiss() is None:  # pragma: no cover - faiss is a dependency
        return {"openblas_core": None}
    path = _loaded_library("faiss", "openblas")
    if path is None:
        return {"openblas_core": None}
    try:
        lib = ctypes.CDLL(path)
        lib.openblas_get_corename.restype = ctypes.c_char_p
        core = lib.openblas_get_corename()
    except (OSError, AttributeError):
        return {"openblas_core": None}
    return {"openblas_core": core.decode() if core else None}


#: CPU flags that decide which kernels the libraries pick (recorded with every run).
ISA_FLAGS: tuple[str, ...] = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                              "avx512_fp16", "amx_bf16", "amx_tile")


def cpu_name(cpu: Mapping[str, Any] | None) -> str | None:
    """"<vendor> <model name>" of a :func:`cpu_model` record (``None`` when neither is known)."""
    cpu = cpu or {}
    return " ".join(str(v) for v in (cpu.get("vendor"), cpu.get("model_name")) if v) or None


def cpu_model() -> dict[str, Any]:
    """Vendor, family/model/stepping, model name and :data:`ISA_FLAGS` of this CPU.

    From ``/proc/cpuinfo`` (Linux); elsewhere only ``platform.processor()``.
    """
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        import platform

        return {"model_name": platform.processor() or None}
    flags = set(fields.get("flags", "").split())
    return {
        "vendor": fields.get("vendor_id"),
        "model_name": fields.get("model name"),
        "family_model_stepping": "/".join(fields.get(k, "?") for k in
                                          ("cpu family", "model", "stepping")),
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
    }
