# The two commands of the course: `make course` runs every lesson, `make test` runs the tests; `make site` builds the
# course as a static HTML site. Each builds its own virtual environment in .venv from requirements.txt on first use.
# The lessons, their order and what each needs come from course.toml (docs/contributing.md: adding a lesson).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SITE_STAMP := $(VENV)/.installed-site

.PHONY: course test site map bench study venv clean

venv: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Runs every lesson course.toml lists (the path, the practitioner notebooks, the solutions) with the full profile,
# headless, longest first by the last recorded times, each after the lessons it needs; saves outputs into the
# notebooks and figures into figures/, and prints where the time went (figures/course_times.json, keyed by
# course.toml's paths). LOWRANK_PROFILE=quick make course: a fast pass written to build/quick/ (committed files
# untouched). On a multi-core CPU two notebooks run at a time, each on its share of the cores; JOBS=1: one at a time.
# Finished training runs are kept in build/run_cache/ and reused when a notebook asks for the same run again
# (lowrank.run_cache); LOWRANK_RUN_CACHE=off make course trains every run.
course: $(STAMP)
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(BIN)/python tools/run_course.py $(if $(JOBS),--jobs $(JOBS))

# Package tests and every notebook under notebooks/ (sub-folders included) under nbval in the quick profile, offline,
# one test file or notebook per worker and one worker per core (pytest-xdist), each on one torch thread. The
# notebooks go first, so that the last to finish are short test files rather than a long notebook. They share a
# fresh run cache (lowrank.run_cache), never one kept by earlier runs.
test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 LOWRANK_PROFILE=quick LOWRANK_FIGURES=$$(mktemp -d) \
		LOWRANK_RUN_CACHE=$$(mktemp -d) OMP_NUM_THREADS=1 \
		$(BIN)/python -m pytest notebooks tests --nbval-lax --nbval-current-env -p no:cacheprovider \
		-n auto --dist loadfile

# The course as a static HTML site in build/site/, from the committed notebooks (never executed), offline, math by a
# MathJax copied into the site (tools/build_site.py). Open build/site/index.html.
site: $(STAMP) $(SITE_STAMP)
	$(BIN)/python tools/build_site.py

$(SITE_STAMP): requirements-site.txt $(STAMP)
	$(BIN)/pip install --quiet -r requirements-site.txt
	touch $(SITE_STAMP)

# README's course map and headline results, regenerated from course.toml, figures/ and bench/results.json.
map: $(STAMP)
	$(BIN)/python tools/course_map.py --write

# The Figure-2 study (notebook 05): 30 training runs, two at a time on a 2-core CPU (STUDY_JOBS=1: one at a time);
# resumes after Ctrl-C. Run times: figures/05_ablation_runs.json and notebook 05's section 2.
# It trains in fp32 whatever LOWRANK_PRECISION says (lowrank.figure2.STUDY_AUTOCAST): its committed results are fp32.
STUDY_JOBS ?= 2
study: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m lowrank.figure2 --out figures/ --jobs $(STUDY_JOBS)

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/step_bench.py

clean:
	rm -rf $(VENV)
