"""Where the package finds libpikv, the bundled data and the `pikv` command.

The data directory is found the way the `pikv` command finds it
(src/cli/datadir.h), with the library's file in place of the executable:
$PIKV_DATA_DIR, else PREFIX/share/pikv beside PREFIX/lib/libpikv.so, else the
source tree above build/libpikv.so. The command itself is the one installed
beside the library (PREFIX/bin/pikv, or build/pikv), else the first on $PATH."""
import ctypes
import functools
import os
import shutil
import subprocess
import sys

from .errors import Error

SONAME = "libpikv.so.0"
BUNDLED_MODEL = os.path.join("models", "pikv-ref-14m")

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _library_candidates():
    """Paths (or a bare soname for the dynamic loader) to try, best first."""
    env = os.environ.get("PIKV_LIBRARY")
    if env:
        return [env]
    candidates = [os.path.join(_CHECKOUT, "build", "libpikv.so")]
    command = shutil.which("pikv")
    if command:
        bindir = os.path.dirname(os.path.realpath(command))
        candidates += [os.path.join(bindir, "..", "lib", SONAME), os.path.join(bindir, "libpikv.so")]
    return [c for c in candidates if os.path.exists(c)] + [SONAME]


def load_library():
    """ctypes' handle on libpikv: $PIKV_LIBRARY, else the source tree's build
    (when this package is used from the tree), else the one beside the `pikv`
    on $PATH, else whatever the dynamic loader finds (after `make install` and
    ldconfig)."""
    tried = []
    for candidate in _library_candidates():
        try:
            _prefer_native_blas_kernels(candidate)
            return ctypes.CDLL(candidate)
        except OSError as e:
            tried.append(str(e))
    raise Error("cannot load libpikv (set PIKV_LIBRARY to its path, or put PREFIX/bin on PATH): "
                + "; ".join(tried))


_CORENAME_PROBE = ("import ctypes, sys\n"
                   "name = ctypes.CDLL(sys.argv[1]).openblas_get_corename\n"
                   "name.restype = ctypes.c_char_p\n"
                   "print(name().decode())\n")


def _prefer_native_blas_kernels(library):
    """The `pikv` command's rule (prefer_native_blas_kernels in src/cli/main.c),
    so that Python runs the same BLAS kernels, and so computes the same floats,
    as the command: when the user has not set OPENBLAS_CORETYPE and OpenBLAS,
    not knowing this CPU, falls back to its generic Prescott kernels (4-5x
    slower), choose the AVX-512 or AVX2 kernels the CPU has. OpenBLAS reads the
    variable once, when it is loaded, so a child process loads the library
    first to ask which kernels it would pick."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return
    probe = subprocess.run([sys.executable, "-c", _CORENAME_PROBE, library], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, universal_newlines=True)
    if probe.returncode != 0 or probe.stdout.strip().lower() != "prescott":
        return
    flags = set()
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    elif {"avx2", "fma"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


@functools.lru_cache(maxsize=None)
def library_path(handle):
    """The real path of the loaded library file, from the dynamic loader
    (dladdr on one of its functions): right even when it was found by soname.
    (Once: each ctypes.CDLL object is a small graph of classes that only the
    garbage collector frees.)"""
    libc = ctypes.CDLL(None)
    libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    info = _DlInfo()
    if libc.dladdr(ctypes.cast(handle.pikv_last_error, ctypes.c_void_p), ctypes.byref(info)) and info.dli_fname:
        return os.path.realpath(info.dli_fname.decode())
    return os.path.realpath(handle._name)


def _holds_bundled_model(directory):
    return os.path.isfile(os.path.join(directory, BUNDLED_MODEL, "config.json"))


def data_dir(handle):
    """The data directory: $PIKV_DATA_DIR, else beside the loaded library."""
    env = os.environ.get("PIKV_DATA_DIR")
    if env:
        return env
    libdir = os.path.dirname(library_path(handle))
    for candidate in (os.path.join(libdir, "..", "share", "pikv"), os.path.join(libdir, "..")):
        if _holds_bundled_model(candidate):
            return os.path.realpath(candidate)
    raise Error("no bundled model beside %s (set PIKV_DATA_DIR, or give the model's directory)" % libdir)


def model_dir(handle):
    """The bundled model's directory: $PIKV_MODEL, else DATA_DIR/models/pikv-ref-14m."""
    return os.environ.get("PIKV_MODEL") or os.path.join(data_dir(handle), BUNDLED_MODEL)


def executable(handle):
    """The `pikv` command: beside the loaded library, else the first on $PATH."""
    libdir = os.path.dirname(library_path(handle))
    for candidate in (os.path.join(libdir, "..", "bin", "pikv"), os.path.join(libdir, "pikv")):
        if os.access(candidate, os.X_OK) and os.path.isfile(candidate):
            return os.path.realpath(candidate)
    command = shutil.which("pikv")
    if command:
        return command
    raise Error("cannot find the pikv command beside %s or on PATH" % libdir)
