from collections import Counter

import pytest

from lowrank.data import load_sentiment


@pytest.fixture(scope="module")
def data():
    return load_sentiment(train_size=2000, eval_size=400, seed=0)


def test_splits_are_balanced_and_disjoint(data):
    assert {split: len(data[split]) for split in data} == {"validation": 400, "test": 400, "train": 2000}
    for split in data:
        assert data[split].column_names == ["text", "label"]
        counts = Counter(data[split]["label"])
        assert counts[0] == counts[1] == len(data[split]) // 2
    texts = [set(data[split]["text"]) for split in data]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


def test_split_is_reproducible_and_seed_dependent(data):
    again = load_sentiment(train_size=2000, eval_size=400, seed=0)
    assert list(again["test"]["text"]) == list(data["test"]["text"])
    other = load_sentiment(train_size=2000, eval_size=400, seed=1)
    assert list(other["test"]["text"]) != list(data["test"]["text"])


def test_test_split_does_not_depend_on_train_size(data):
    small = load_sentiment(train_size=200, eval_size=400, seed=0)
    assert list(small["test"]["text"]) == list(data["test"]["text"])


def test_bad_names_and_sizes():
    with pytest.raises(ValueError, match="unknown dataset 'sst2'"):
        load_sentiment("sst2")
    with pytest.raises(ValueError, match="could not load 'imdb' from the hub"):
        load_sentiment("imdb")
    with pytest.raises(ValueError, match="train_size 100000 exceeds"):
        load_sentiment(train_size=100_000)
    with pytest.raises(ValueError, match="eval_size must be an integer"):
        load_sentiment(eval_size=0)
