"""The compiled hot path of the serving threads (see llsupervise/supervisor/engine/_fastpath.c);
everything else is declared in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "llsupervise.supervisor.engine._fastpath",
            sources=["llsupervise/supervisor/engine/_fastpath.c"],
            extra_compile_args=["-O2", "-std=gnu11"],
        )
    ]
)
