# The two commands of the quick start: `make test` and `make book`.
# Each creates .venv from requirements.txt on first use and reuses it afterwards.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install data test test-unit test-notebooks test-experiments study chapters book lint bench gpu-check clean

$(STAMP): requirements.txt requirements-book.txt requirements-references.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-references.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint book test-notebooks test-experiments test-unit

# The tests, and the examples in the docstrings of every module of dyntemp.
test-unit: $(STAMP)
	$(BIN)/python -m pytest --doctest-modules dyntemp tests

# The theory chapters and the chapter on the data, executed cell by cell and compared output
# by output (strict); chapter 5 reads the real CIFAR-10. Matplotlib builds its font cache
# first, so that its one-time notice on stderr stays out of the notebooks.
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
test-notebooks: data
	$(BIN)/python -c "import matplotlib.pyplot"
	$(BIN)/python -m pytest $(NBVAL) -p no:cacheprovider notebooks/0[1-5]_*.ipynb

# The real CIFAR-10: the folder DYNTEMP_DATA names, else torchvision downloads it into ./data.
export DYNTEMP_DATA ?= $(CURDIR)/data
data: $(STAMP)
	$(BIN)/python -c "from dyntemp.data import load_dataset as load; \
	  [load('cifar10', split=split, download=True) for split in ('train', 'test')]"

# The experiment chapters at smoke scale: each trains its own tiny runs on the real CIFAR-10,
# shared between the chapters through one temporary folder; only the cells marked
# NBVAL_CHECK_OUTPUT are compared.
test-experiments: data
	$(BIN)/python -c "import matplotlib.pyplot"
	runs=$$(mktemp -d) && DYNTEMP_SCALE=smoke DYNTEMP_SMOKE_DIR=$$runs \
	  $(BIN)/python -m pytest --nbval-lax --nbval-current-env \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider notebooks/0[6-9]_*.ipynb notebooks/1[0-9]_*.ipynb; \
	  status=$$?; rm -rf $$runs; exit $$status

# The study behind the experiment chapters at DYNTEMP_SCALE (cpu unless set; about 3.5 hours
# on a quiet 2-core CPU); finished runs in results/<scale> are kept, so it resumes.
study: data
	$(BIN)/python -m dyntemp.experiments study $(or $(DYNTEMP_SCALE),cpu)

# The experiment chapters executed in place, showing (and, with DYNTEMP_SCALE set, training)
# that scale's runs; what they print is then what the book shows.
chapters: data
	$(BIN)/python -c "import matplotlib.pyplot"
	cd notebooks && for chapter in 0[6-9]_*.ipynb 1[0-9]_*.ipynb; do \
	  ../$(BIN)/jupyter-execute --inplace --timeout=-1 $$chapter || exit 1; done

# The book, from scratch (a stale build would hide the warnings of unchanged pages);
# any warning fails it.
book: $(STAMP)
	rm -rf _build/html _build/.doctrees _build/jupyter_execute
	$(BIN)/jupyter-book build . -n -W --keep-going

bench: $(STAMP)
	$(BIN)/python -m pip install -q lightly
	$(BIN)/python -m dyntemp bench loss
	$(BIN)/python -m dyntemp bench augment
	$(BIN)/python -m dyntemp bench train

# The GPU check (at most 5 minutes on one GPU): every CUDA path once, results/bench-gpu.
gpu-check: $(STAMP)
	$(BIN)/python -m dyntemp bench gpu --out results/bench-gpu

clean:
	rm -rf _build .pytest_cache
