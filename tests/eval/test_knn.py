import numpy as np
import pytest
import torch

from contrastlab.eval.knn import knn_accuracy, knn_predict


def naive_knn(train, train_y, test, num_classes, k, t):
    """The MoCo demo's rule written as a float64 loop, one query at a time."""
    train = np.asarray(train, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    test /= np.linalg.norm(test, axis=1, keepdims=True)
    preds = []
    for q in test:
        sim = train @ q
        top = np.argsort(-sim, kind="stable")[:k]
        scores = np.zeros(num_classes)
        for j in top:
            scores[train_y[j]] += np.exp(sim[j] / t)
        preds.append(int(np.argmax(scores)))
    return np.array(preds)


def test_knn_matches_naive_float64_loop(blobs):
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(300, 16, generator=gen, dtype=torch.float64)
    train_y = torch.randint(0, 7, (300,), generator=gen)
    test = torch.randn(101, 16, generator=gen, dtype=torch.float64)
    for k, t, chunk in ((200, 0.1, 512), (5, 0.07, 13), (1, 0.5, 1), (1000, 0.1, 64)):
        got = knn_predict(train, train_y, test, 7, k=k, temperature=t, chunk=chunk)
        want = naive_knn(train.numpy(), train_y.numpy(), test.numpy(), 7, min(k, 300), t)
        assert np.array_equal(got.numpy(), want), (k, t, chunk)
    # float32 features: the fast path agrees with the float64 reference
    got32 = knn_predict(train.float(), train_y, test.float(), 7, k=20, temperature=0.1, chunk=32)
    want = naive_knn(train.numpy(), train_y.numpy(), test.numpy(), 7, 20, 0.1)
    assert (got32.numpy() == want).mean() >= 0.99


def test_knn_separable_and_random(blobs):
    f, y = blobs(60, 5, 32, sep=4.0)
    assert knn_accuracy(f[:200], y[:200], f[200:], y[200:], 5, k=20) > 98.0
    f, y = blobs(400, 4, 32, sep=0.0, seed=1)
    acc = knn_accuracy(f[:1200], y[:1200], f[1200:], y[1200:], 4, k=50)
    assert 15.0 < acc < 35.0  # chance is 25 %; 400 test samples give a standard error of ~2.2


def test_knn_topk_and_empty(blobs):
    f, y = blobs(30, 10, 8, sep=0.5)
    # top-k by hand: the label among the k classes with the largest summed exp(sim / T)
    x = torch.nn.functional.normalize(f.double(), dim=1)
    sim = x @ x.T
    for topk in (1, 5):
        hits = 0
        for i in range(len(y)):
            near = torch.argsort(-sim[i], stable=True)[:10]
            votes = np.zeros(10)
            for j in near.tolist():
                votes[int(y[j])] += float(torch.exp(sim[i, j] / 0.1))
            hits += int(y[i]) in np.argsort(-votes, kind="stable")[:topk]
        got = knn_accuracy(f, y, f, y, 10, k=10, topk=topk)
        assert got == pytest.approx(100.0 * hits / len(y)), topk
    assert np.isnan(knn_accuracy(f, y, f[:0], y[:0], 10))


def test_accuracies_are_exact_percentages_not_float32_roundings():
    """metrics.jsonl and the eval results held 10.999999940395355 for 11 hits of 100: the mean
    of a float32 hit vector. 11 of 100 is 11.0, and 1 of 3 is 100/3 to float64's precision."""
    from contrastlab.eval.knn import topk_accuracy

    labels = torch.zeros(100, dtype=torch.long)
    scores = torch.zeros(100, 2)
    scores[:11, 0] = 1.0  # 11 rows rank the true class first
    scores[11:, 1] = 1.0
    assert topk_accuracy(scores, labels) == 11.0
    assert topk_accuracy(scores[:3], torch.tensor([0, 1, 1])) == 100.0 / 3  # only row 0 hits
