"""What TensorRT and CUDA this machine has and needs, read without importing either (standard library only).

* **The machine**: a Jetson (L4T's ``/etc/nv_tegra_release``) or a GPU box, and the CUDA major its driver runs.
  PyPI's TensorRT and cuda-python come in one build per CUDA major, and a build newer than the driver fails at
  its first CUDA call ("CUDA initialization failure with error: 35", ``cudaErrorInsufficientDriver``).
* **The advice** that every message about a missing or mismatched TensorRT or cuda-python gives (``doctor``,
  ``build-engines``, the engine runner, ``trml-edge --version``): the extra for this driver, or on a Jetson
  JetPack's own TensorRT, never a PyPI wheel (on a JetPack older than 6.1, whose TensorRT is 8.x: move to 6.1).
* **The pip TensorRT installed** and the CUDA major it was built for.
* **The server's TensorRT**: the one ``libnvinfer`` a Triton ``tensorrt`` backend loads (``doctor`` shows it,
  ``serve`` checks plans against it), and the rule for whether a plan loads there.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
from pathlib import Path

TEGRA_RELEASE = Path("/etc/nv_tegra_release")  # written by L4T on every Jetson; tests point this elsewhere

# The TensorRT releases this package builds with; pyproject's trt-cu12 and trt-cu13 extras use the same range.
TRT_MIN, TRT_BELOW = (10, 1), (12, 0)
TRT_RANGE = ">=10.1,<12"
TRT_REQUIREMENT = f"tensorrt{TRT_RANGE}"

# The oldest driver branch for each CUDA major of the pip wheels, newest first:
# * 13: "Driver: Linux (580.65.06 or later)" (cuda-bindings 13 installation page); TensorRT 11.4's prerequisites
#   ask r580+ for its CUDA 13 packages;
# * 12: "the lower r535+ on Linux ... applies only to CUDA 12.x pip wheels" (TensorRT 11.4 prerequisites);
#   cuda-bindings 12.9 itself needs 525.60.13+ (its installation page).
DRIVER_CUDA = ((580, 13), (535, 12))
# L4T release -> the CUDA major of its JetPack: JetPack 6 is L4T R36 with CUDA 12.6, JetPack 7 is L4T R38 with
# CUDA 13 (JetPack release notes).
L4T_CUDA = {36: 12, 38: 13}
# The oldest L4T release whose JetPack ships a TensorRT in the supported range: JetPack 6.1 is L4T R36.4 with
# TensorRT 10.3. JetPack 6.0 (L4T R36.2 and R36.3) ships TensorRT 8.6 and JetPack 5 (R35) 8.5, and their apt
# repositories hold no newer one, so reinstalling JetPack's TensorRT there brings the same release back
# (JetPack release notes).
L4T_MIN = (36, 4)
EXTRAS = {12: "trt-cu12", 13: "trt-cu13"}  # pyproject.toml's extras, one per CUDA major
BINDINGS = {12: "cuda-bindings>=12.8,<13", 13: "cuda-bindings>=13,<14"}  # the cuda-python each extra pulls


def version_tuple(version: str, parts: int = 3) -> tuple[int, ...]:
    """``"10.12.0.36"`` -> ``(10, 12, 0)``: numbers, so 10.12 sorts after 10.3 (padded with zeros)."""
    out = []
    for part in (version.split(".") + ["0"] * parts)[:parts]:
        digits = re.match(r"\d*", part).group()
        out.append(int(digits or 0))
    return tuple(out)


def tegra_release(path: Path | None = None) -> str | None:
    """The first line of L4T's release file (``# R36 (release), REVISION: 4.3, ...``), or None off a Jetson."""
    try:
        lines = (path or TEGRA_RELEASE).read_text(errors="replace").splitlines()
    except OSError:
        return None
    return lines[0].strip() if lines else ""


def l4t_major(release: str | None) -> int | None:
    m = re.match(r"#?\s*R(\d+)", release or "")
    return int(m.group(1)) if m else None


def l4t_version(release: str | None) -> tuple[int, int] | None:
    """``# R36 (release), REVISION: 4.3, ...`` -> ``(36, 4)``; None when the line does not say both."""
    m = re.match(r"#?\s*R(\d+)\b.*?REVISION:\s*(\d+)", release or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def jetpack_tensorrt_problem(release: str | None) -> str | None:
    """Why this Jetson's JetPack cannot give a supported TensorRT (its L4T is older than R36.4, JetPack 6.1), or
    None (a newer release, or a release line that does not say)."""
    v = l4t_version(release)
    if v is None or v >= L4T_MIN:
        return None
    which = "JetPack 6.0, whose TensorRT is 8.6" if v[0] == 36 else "JetPack 5 or older, whose TensorRT is 8.x"
    return f"this Jetson runs L4T R{v[0]}.{v[1]} ({which}, below the supported {TRT_MIN[0]}.{TRT_MIN[1]})"


def nvidia_smi(fields: tuple[str, ...] = ("name", "driver_version", "compute_cap", "memory.total")
               ) -> list[dict[str, str]]:
    """One dict per GPU from ``nvidia-smi --query-gpu``; empty when it is absent or fails."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    rows = [dict(zip(fields, (c.strip() for c in line.split(",")))) for line in out.stdout.splitlines()
            if line.strip()]
    return [r for r in rows if len(r) == len(fields)]


def driver_cuda_major(driver: str | None) -> int | None:
    """The CUDA major of the pip wheels a driver runs (``"550.54.15"`` -> 12); None below R535 or unknown."""
    if not driver:
        return None
    branch = version_tuple(driver, 1)[0]
    return next((major for first, major in DRIVER_CUDA if branch >= first), None)


def machine() -> dict:
    """Jetson or not, the driver, and the CUDA major TensorRT and cuda-python must be built for here."""
    release = tegra_release()
    if release is not None:
        return {"jetson": True, "l4t": release, "driver": None, "cuda_major": L4T_CUDA.get(l4t_major(release))}
    gpus = nvidia_smi(("driver_version",))
    driver = gpus[0]["driver_version"] if gpus else None
    return {"jetson": False, "l4t": None, "driver": driver, "cuda_major": driver_cuda_major(driver)}


def jetson_advice(m: dict) -> str:
    """The fix on a Jetson (``m`` is ``machine()``): JetPack's own TensorRT, or on a JetPack whose TensorRT is too
    old, the JetPack to move to (reinstalling its TensorRT would bring the same old release back)."""
    problem = jetpack_tensorrt_problem(m.get("l4t"))
    if problem:
        return (f"{problem}: move to JetPack 6.1 or later (L4T R36.4+, TensorRT 10.3; JetPack 6 runs on Jetson "
                "Orin), then run `trml-edge doctor` again; this JetPack's own TensorRT packages hold no newer "
                "release and PyPI's TensorRT wheels are not built for JetPack")
    cuda_major = m.get("cuda_major")
    bindings = BINDINGS[13] if cuda_major == 13 else BINDINGS[12]
    return (f"on a Jetson use JetPack's TensorRT (sudo apt install python3-libnvinfer) and cuda-python "
            f"{'13' if cuda_major == 13 else '<13'} (pip install '{bindings}'), in a virtual environment that sees "
            "the system packages (python3 -m venv --system-site-packages VENV); PyPI's TensorRT wheels are not "
            "built for JetPack")


def install_advice(m: dict | None = None) -> str:
    """The one-line fix for a missing or mismatched TensorRT / cuda-python on this machine."""
    m = machine() if m is None else m
    if m.get("jetson"):
        return jetson_advice(m)
    major, driver = m.get("cuda_major"), m.get("driver")
    if major is not None:
        return f"pip install 'trml-edge[{EXTRAS[major]}]' (this driver, {driver}, runs CUDA {major})"
    both = "pip install 'trml-edge[trt-cu13]' with an R580+ driver, 'trml-edge[trt-cu12]' with R535 to R575"
    if driver:
        return f"the NVIDIA driver {driver} is older than R535, which TensorRT's wheels need: update it, then {both}"
    return (f"on the GPU box: {both} (`trml-edge doctor` shows the driver); on a Jetson, JetPack's TensorRT "
            "(python3-libnvinfer), not a pip wheel")


def tensorrt_version_problem(version: str) -> str | None:
    """None when ``version`` is in the supported range, else the problem and its fix."""
    if TRT_MIN <= version_tuple(version, 2) < TRT_BELOW:
        return None
    return f"TensorRT {version} is outside the supported range (10.1 to 11.x): {install_advice()}"


def tensorrt_wheels() -> dict[str, str]:
    """The pip distributions of TensorRT installed here (``tensorrt``, ``tensorrt-cu12``, ``-libs``, ``-bindings``)
    -> version. Empty for JetPack's or a tar install (no pip metadata) and when TensorRT is absent."""
    found = {}
    for dist in md.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata.get("Name") or "").lower()
        if name == "tensorrt" or re.fullmatch(r"tensorrt-cu\d+(-libs|-bindings)?", name):
            found[name] = dist.version
    return found


def wheel_cuda_major(wheels: dict[str, str]) -> int | None:
    """The CUDA major the installed TensorRT wheels are built for (``tensorrt`` itself names its variant in its
    requirements: 10.13+ is ``tensorrt_cu13``); None when there is no pip TensorRT or it does not say."""
    majors = {int(m.group(1)) for name in wheels if (m := re.match(r"tensorrt-cu(\d+)", name))}
    if not majors and "tensorrt" in wheels:
        for req in md.requires("tensorrt") or []:
            m = re.match(r"tensorrt[-_]cu(\d+)", req)
            if m:
                majors.add(int(m.group(1)))
    return max(majors) if majors else None


def cuda_summary(m: dict | None = None) -> str:
    """TensorRT's wheel, cuda-python and the driver, each with its CUDA major, in one line (for error messages)."""
    m = machine() if m is None else m
    wheels = tensorrt_wheels()
    major = wheel_cuda_major(wheels)
    parts = [f"TensorRT {'/'.join(f'{n} {v}' for n, v in sorted(wheels.items()))} (CUDA {major or '?'})" if wheels
             else "TensorRT without pip metadata (JetPack's or a system install)"]
    try:
        bindings = md.version("cuda-bindings")
        parts.append(f"cuda-bindings {bindings} (CUDA {version_tuple(bindings, 1)[0]})")
    except md.PackageNotFoundError:
        parts.append("no cuda-bindings")
    parts.append(m["l4t"] if m.get("jetson") else
                 f"driver {m.get('driver') or 'not found'} (CUDA {m.get('cuda_major') or '?'})")
    return "; ".join(parts)


# ---- the server's TensorRT ------------------------------------------------------------------------------------

# Where the dynamic loader finds a library that is not on LD_LIBRARY_PATH or in the ldconfig cache: the
# system folders (Triton's NGC container and JetPack install libnvinfer.so.N.M.P there).
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib", "/usr/lib")


def linked_nvinfer(backend_lib: Path) -> str | None:
    """The ``libnvinfer.so.N`` that a shared library links: its DT_NEEDED name, a NUL-terminated string of the
    ELF dynamic string table."""
    m = re.search(rb"\x00(libnvinfer\.so\.\d+)\x00", backend_lib.read_bytes())
    return m.group(1).decode() if m else None


def _ldconfig(soname: str) -> list[Path]:
    """Paths the ldconfig cache gives for ``soname`` (``ldconfig -p``: ``libnvinfer.so.10 (libc6,x86-64) => PATH``)."""
    exe = shutil.which("ldconfig") or ("/sbin/ldconfig" if Path("/sbin/ldconfig").is_file() else None)
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [Path(p) for p in re.findall(rf"^\s*{re.escape(soname)}\s.*=>\s*(\S+)\s*$", out, flags=re.M)]


def server_tensorrt(backends: Path) -> tuple[str | None, str]:
    """(version, how it was found) of the TensorRT a Triton server's ``tensorrt`` backend loads; (None, why not).

    The backend (``backends/tensorrt/libtriton_tensorrt.so``) links ``libnvinfer.so.N``. That name is looked up
    in the dynamic loader's order (``LD_LIBRARY_PATH``, the backend's own folder, the ldconfig cache, the system
    folders), and the file it names (a link to ``libnvinfer.so.N.M.P``) gives the full version, so a folder that
    holds two TensorRT releases yields the one the backend really loads.
    """
    lib = Path(backends) / "tensorrt" / "libtriton_tensorrt.so"
    if not lib.is_file():
        return None, f"no tensorrt backend ({lib} does not exist)"
    soname = linked_nvinfer(lib)
    if soname is None:
        return None, f"{lib.name} links no libnvinfer.so.N"
    dirs = [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    candidates = [d / soname for d in dirs] + [lib.parent / soname] + _ldconfig(soname)
    candidates += [Path(d) / soname for d in LIB_DIRS]
    for path in candidates:
        if path.exists():
            real = path.resolve()
            m = re.fullmatch(r"libnvinfer\.so\.(\d+\.\d+\.\d+)(?:\.\d+)*", real.name)
            if m:
                return m.group(1), f"{soname} linked by {lib.name}: {real}"
            return None, f"{path} (what {lib.name} links) is {real.name}, whose name carries no full version"
    return None, (f"{lib.name} links {soname}, found on neither LD_LIBRARY_PATH, the backend's folder, the ldconfig "
                  f"cache nor {', '.join(LIB_DIRS)}")


def plan_loads(plan_version: str, server_version: str) -> bool:
    """Whether a plan built by TensorRT ``plan_version`` deserializes on ``server_version``: only on the release
    that built it ("By default, TensorRT engines are compatible only with the version of TensorRT used to build
    them", TensorRT developer guide, "Version Compatibility"). Compared as numbers, major.minor.patch."""
    return version_tuple(plan_version) == version_tuple(server_version)


def gpu_architectures() -> list[str]:
    """This machine's GPUs as ``sm<major><minor>`` (the name build-engines records), from nvidia-smi; empty when
    it cannot tell."""
    return [f"sm{g['compute_cap'].replace('.', '')}" for g in nvidia_smi(("compute_cap",))
            if re.fullmatch(r"\d+\.\d+", g["compute_cap"])]
