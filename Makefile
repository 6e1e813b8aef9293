# The two commands of the quick start: `make test` and `make book`.
# Each creates .venv from requirements.txt on first use and reuses it afterwards.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-unit test-notebooks book lint bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint book test-notebooks test-unit

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests

# The theory chapters, executed cell by cell and compared output by output (strict).
# Matplotlib builds its font cache first, so that its one-time notice on stderr stays out of
# the notebooks.
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
test-notebooks: $(STAMP)
	$(BIN)/python -c "import matplotlib.pyplot"
	$(BIN)/python -m pytest $(NBVAL) -p no:cacheprovider notebooks/0[1-4]_*.ipynb

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

clean:
	rm -rf _build .pytest_cache
