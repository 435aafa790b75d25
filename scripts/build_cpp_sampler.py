"""Build (or find cached) the C++ sampler of redge_mini once at install time, so that the first
ReDGE call of a test or a chapter does not pause for the compiler. Never fails the install: without
a C++ compiler or ninja the library uses its PyTorch path, and this says so."""

import time
import warnings

from redge_mini import _cpp_sampler

start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    built = _cpp_sampler.available()
seconds = time.perf_counter() - start
if built:
    print(f"C++ sampler ready in {seconds:.0f} s: {_cpp_sampler.build_directory()}")
elif not _cpp_sampler.enabled():
    print(f"C++ sampler switched off ({_cpp_sampler.ENV_SWITCH}=0): the PyTorch path is used")
else:
    print(f"C++ sampler not built, the PyTorch path is used: {_cpp_sampler.failure()}")
