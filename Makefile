# `make demo` and `make test` set up everything on a fresh machine, then do the work.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
CORE    := $(VENV)/.installed-core
DEMO_OUT ?= demo_output

.PHONY: demo test lint demo-weights screenshots benchmark gpu-wheels xvfb clean

# The runtime set only (the headless install: no napari, no Qt), enough for the command line.
$(CORE): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -qq --disable-pip-version-check -c constraints.txt -e .
	touch $@

# The dev extra: napari with PyQt6, pytest, pytest-qt, ruff, build, twine.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -qq --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@ $(CORE)

# A real X display for napari's GUI tests: Xvfb plus the X/xcb libraries Qt 6's xcb platform plugin loads.
GUI_PACKAGES := xvfb xauth libgl1 libegl1 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0 libxcb-cursor0 \
	libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0

xvfb:
	@missing=$$(for p in $(GUI_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing packages for the GUI tests: $$missing (install them with apt-get)" >&2; exit 1; fi; fi

demo: $(CORE)
	$(VENV)/bin/seg2refine demo --out $(DEMO_OUT)

test: $(STAMP) xvfb
	xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

demo-weights: $(CORE)
	$(VENV)/bin/seg2refine train demo --out src/seg2refine_core/weights

screenshots: $(STAMP) xvfb
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) docs/make_screenshots.py

benchmark: $(CORE)
	$(VENV)/bin/seg2refine benchmark

# What the GPU check carries to a lent GPU machine (Python 3.12, manylinux x86_64, torch preinstalled): the
# project's wheel and exactly the dependency wheels that machine lacks (benchmarks/gpu/wheels.txt), within the
# device tool's 64 MiB with the working tree. benchmarks/README.md gives the `run` call that uses them.
GPU_WHEELS := .whl
MANYLINUX  := $(foreach v,2_28 2_27 2_24 2_17,--platform manylinux_$(v)_x86_64) --platform manylinux2014_x86_64
gpu-wheels: $(STAMP)
	rm -rf $(GPU_WHEELS)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $(MANYLINUX) \
		-d $(GPU_WHEELS) -r benchmarks/gpu/wheels.txt
	$(PY) -m build --no-isolation --wheel --outdir $(GPU_WHEELS) . >/dev/null
	$(PY) benchmarks/gpu/carry_size.py $(GPU_WHEELS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache $(GPU_WHEELS)
