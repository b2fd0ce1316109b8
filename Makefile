# `make demo` and `make test` set up everything on a fresh machine, then do the work.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
DEMO_OUT ?= demo_output

.PHONY: demo test lint demo-weights screenshots benchmark xvfb clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -qq --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

xvfb:
	@command -v xvfb-run >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth >/dev/null; \
	  else echo "xvfb-run is missing: install the packages xvfb and xauth" >&2; exit 1; fi; }

demo: $(STAMP)
	$(VENV)/bin/seg2refine demo --out $(DEMO_OUT)

test: $(STAMP) xvfb
	xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

demo-weights: $(STAMP)
	$(VENV)/bin/seg2refine train demo --out src/seg2refine_core/weights

screenshots: $(STAMP) xvfb
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) docs/make_screenshots.py

benchmark: $(STAMP)
	$(VENV)/bin/seg2refine benchmark

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
