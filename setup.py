"""Build hook for the one compiled piece: shm's heap sift loops (all metadata is in pyproject.toml).

The extension is optional: where it cannot be built (no C compiler), shm falls back to the same
loops in Python (shm/heapcore_py.py), slower but identical in behaviour.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "heapd.shm._heapcore",
            sources=["shm/_heapcore.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
            optional=True,
        )
    ]
)
