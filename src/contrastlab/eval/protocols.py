"""Protocol runners: an :class:`EvalContext` and options in, a JSON-ready result out.

Each runner returns ``{"protocol", "summary": {metric: value}, "details": ..., "setup": ...}``.
``summary`` holds the headline numbers (what ``eval all`` and the HTML report tabulate);
``details`` everything else.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Sequence

import torch

from contrastlab.errors import UserError, plural, warn
from contrastlab.eval.context import EvalContext
from contrastlab.eval.knn import k_covers_bank, trivial_top5, without_trivial_top5
from contrastlab.eval.results import chance_levels, markdown_table, pm

PROTOCOLS = ("knn", "linear", "fewshot", "rotation", "corruption", "factors", "transfer")


def _wrap(ctx: EvalContext, protocol: str, summary: dict, details: dict, options: dict) -> dict:
    return {
        "protocol": protocol,
        "summary": summary,
        "details": details,
        "setup": {**ctx.describe(), **options},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def announce(ctx: EvalContext, protocol: str, what: str, hint: str = "") -> None:
    """The first line of a protocol, on stderr, before its work: what runs, on how many images of
    which size, on which device (``hint``: a faster way, where there is one)."""
    from contrastlab.eval.progress import say

    train, test = (len(ctx.indices(split) or ctx.raw(split)) for split in ("train", "test"))
    say(
        f"eval {protocol}: {what}; {train:,} training and {test:,} test images at "
        f"{ctx.image_size} px, on {ctx.device}" + (f"; {hint}" if hint else "")
    )


def knn_settings(ctx: EvalContext, k: int | None, temperature: float | None) -> tuple[int, float]:
    """k and T of a kNN evaluation: the given ones, else the checkpoint's own monitor settings
    (``train.knn_k`` / ``train.knn_temperature``: 200 / 0.1 unless its preset changed them), so
    that ``eval knn`` of a run reproduces the figure its training printed."""
    k = ctx.cfg.train.knn_k if k is None else k
    return k, ctx.cfg.train.knn_temperature if temperature is None else temperature


def run_knn(ctx: EvalContext, k: int | None = None, temperature: float | None = None) -> dict:
    from contrastlab.eval.knn import knn_scores, topk_accuracy

    k, temperature = knn_settings(ctx, k, temperature)
    announce(ctx, "knn", f"weighted kNN, k {k}, T {temperature:g}, space {ctx.space}")
    f_tr, y_tr = ctx.features("train")
    f_te, y_te = ctx.features("test")
    covers = k_covers_bank(k, len(y_tr))
    if covers:
        warn(covers)
    dev = torch.device(ctx.device)
    scores = knn_scores(f_tr.to(dev), y_tr, f_te.to(dev), ctx.num_classes(), k, temperature)
    y = y_te.to(scores.device)
    summary = {"top1": topk_accuracy(scores, y, 1), "top5": topk_accuracy(scores, y, 5)}
    return _wrap(
        ctx,
        "knn",
        without_trivial_top5(summary, ctx.num_classes()),
        {"num_train": len(y_tr), "num_test": len(y_te), "num_classes": ctx.num_classes()},
        {"k": k, "temperature": temperature},
    )


def run_linear(
    ctx: EvalContext,
    mode: str = "moco",
    epochs: int = 100,
    lr: float = 30.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    C: float | None = None,
    val_fraction: float = 0.2,
) -> dict:
    from contrastlab.eval.linear import linear_fast, linear_sgd

    if mode in ("fast", "moco"):
        text = linear_text(mode, epochs if mode == "moco" else None, lr if mode == "moco" else None)
        hint = (
            "a linear layer trained on the frozen encoder's features of every image in every "
            "epoch; --fast (logistic regression on features extracted once) takes a fraction "
            "of the time"
            if mode == "moco"
            else ""
        )
        announce(ctx, "linear", text, hint)
    if mode == "fast":
        f_tr, y_tr = ctx.features("train")
        f_te, y_te = ctx.features("test")
        res = linear_fast(
            f_tr, y_tr, f_te, y_te, ctx.num_classes(), C=C, val_fraction=val_fraction, seed=ctx.seed
        )
        options = {"mode": "fast", "C": C, "val_fraction": val_fraction}
    elif mode == "moco":
        train = ctx.view("train", ctx.train_transform())
        test = ctx.view("test", ctx.eval_transform())
        res = linear_sgd(
            ctx.model,
            train,
            test,
            ctx.num_classes(),
            ctx.space,
            epochs,
            lr,
            momentum,
            weight_decay,
            ctx.batch_size,
            device=ctx.device,
            num_workers=ctx.num_workers,
            seed=ctx.seed,
            progress=ctx.progress,
        )
        options = {
            "mode": "moco",
            "epochs": epochs,
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
        }
    else:
        raise UserError(f"unknown linear mode '{mode}'; valid: moco, fast")
    summary = {"top1": res.pop("top1"), "top5": res.pop("top5")}
    res["num_classes"] = ctx.num_classes()
    return _wrap(ctx, "linear", without_trivial_top5(summary, ctx.num_classes()), res, options)


def _split_labels(ctx: EvalContext, split: str) -> torch.Tensor:
    """The labels int64 [N] of the images of ``split`` that are evaluated (the subset drawn)."""
    labels = torch.as_tensor(ctx.raw(split).labels)
    chosen = ctx.indices(split)
    return labels[chosen] if chosen is not None else labels


def check_fewshot_sizes(
    ctx: EvalContext,
    shots: Sequence[int] = (5, 10),
    n_way: int = 5,
    episode_shots: Sequence[int] = (1, 5),
    queries: int = 15,
    required: Sequence[str] = (),
) -> None:
    """The few-shot sizes of the ``required`` parts ("allway", "episodes") against the data's
    labels alone, so that no features are extracted in vain (``eval all`` calls it for every
    checkpoint before its first protocol).

    Raises:
        UserError: a class has fewer training images than a K of ``shots``, or the test split
            cannot fill ``n_way``-way episodes of ``episode_shots`` + ``queries`` images."""
    from contrastlab.eval.fewshot import check_allway_shots, check_episode_sizes

    if "allway" in required:
        check_allway_shots(_split_labels(ctx, "train"), shots)
    if "episodes" in required:
        check_episode_sizes(_split_labels(ctx, "test"), n_way, episode_shots, queries)


def run_fewshot(
    ctx: EvalContext,
    shots: Sequence[int] = (5, 10),
    trials: int = 5,
    C: float = 1.0,
    n_way: int = 5,
    episode_shots: Sequence[int] = (1, 5),
    queries: int = 15,
    num_episodes: int = 600,
    classifier: str = "centroid",
    which: str = "both",
    required: Sequence[str] = (),
) -> dict:
    """All-way K-shot and N-way K-shot episodes (``which``). With ``which="both"`` a part the
    data cannot support is skipped with a warning, unless it is in ``required`` (the parts
    whose sizes the user chose: ``--ways 50`` on 10 classes is an error, before any work)."""
    from contrastlab.eval.fewshot import allway_kshot, episodes

    if which not in ("allway", "episodes", "both"):
        raise UserError(f"unknown few-shot selection '{which}'; valid: allway, episodes, both")
    required = {which} if which != "both" else set(required)
    check_fewshot_sizes(ctx, shots, n_way, episode_shots, queries, required)
    parts = [f"all-way {_shots(shots)}, {trials} draws each"] if which != "episodes" else []
    if which != "allway":
        parts.append(f"{n_way}-way {_shots(episode_shots)} episodes, {num_episodes} each")
    announce(ctx, "fewshot", "; ".join(parts))
    details, summary = {}, {}
    f_te, y_te = ctx.features("test")

    def part(name: str, run):
        """One part of the protocol; with ``which="both"`` a part the data cannot support is
        skipped with its reason (as ``eval transfer`` does), the other still runs."""
        try:
            details[name] = run()
        except UserError as e:
            if name in required:
                raise
            details[name] = {"skipped": str(e)}

    if which in ("allway", "both"):
        f_tr, y_tr = ctx.features("train")
        part("allway", lambda: allway_kshot(f_tr, y_tr, f_te, y_te, shots, trials, C, ctx.seed))
        for k, v in details["allway"].get("shots", {}).items():
            summary[f"{k}-shot"] = v["mean"]
            summary[f"{k}-shot ci95"] = v["ci95"]
    if which in ("episodes", "both"):
        part(
            "episodes",
            lambda: episodes(
                f_te,
                y_te,
                n_way,
                episode_shots,
                queries,
                num_episodes,
                classifier,
                C,
                ctx.seed,
                progress=ctx.progress,
            ),
        )
        for k, v in details["episodes"].get("shots", {}).items():
            summary[f"{n_way}-way {k}-shot"] = v["mean"]
            summary[f"{n_way}-way {k}-shot ci95"] = v["ci95"]
    if not summary:  # both parts skipped: nothing was measured
        raise UserError("; and ".join(f"{name}: {d['skipped']}" for name, d in details.items()))
    for line in skipped_parts({"details": details}):
        warn(f"eval fewshot: {line}")
    return _wrap(ctx, "fewshot", summary, details, {"which": which})


def _rotation_features(ctx: EvalContext, split: str):
    from contrastlab.eval.rotation import rotation_features

    transform = ctx.eval_transform()
    return rotation_features(
        ctx.model,
        ctx.view(split, transform),
        ctx.space,
        cache_parts=ctx.cache_parts(split, transform),
        desc=f"{split} rotation features",
        **ctx.extract_kwargs(),
    )


def run_rotation(ctx: EvalContext) -> dict:
    from contrastlab.eval.rotation import rotation_probe

    announce(ctx, "rotation", "4-way rotation probe on 4 rotated copies of every image")
    f_tr, r_tr = _rotation_features(ctx, "train")
    f_te, r_te = _rotation_features(ctx, "test")
    res = rotation_probe(f_tr, r_tr, f_te, r_te, seed=ctx.seed)
    return _wrap(ctx, "rotation", {"top1": res.pop("top1")}, res, {})


def run_corruption(
    ctx: EvalContext,
    classifier: str = "linear",
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    k: int | None = None,
    temperature: float | None = None,
) -> dict:
    from contrastlab.eval.corruption import CORRUPTIONS, corruption_eval, table_for
    from contrastlab.eval.knn import knn_predict
    from contrastlab.eval.linear import LogisticProbe

    k, temperature = knn_settings(ctx, k, temperature)
    names = tuple(corruptions or CORRUPTIONS)
    announce(
        ctx,
        "corruption",
        f"{classifier} classifier; the test images clean and under {len(names)} corruption"
        f"{'s' if len(names) != 1 else ''} x {len(severities)} severities: "
        f"{1 + len(names) * len(severities)} passes of the encoder over them",
    )
    f_tr, y_tr = ctx.features("train")
    if classifier == "linear":
        probe = LogisticProbe(seed=ctx.seed).fit(f_tr, y_tr, ctx.num_classes())

        def classify(f):
            return probe.scores(f).argmax(1)
    elif classifier == "knn":
        covers = k_covers_bank(k, len(y_tr))
        if covers:
            warn(covers)

        def classify(f):
            return knn_predict(f_tr, y_tr, f, ctx.num_classes(), k, temperature)
    else:
        raise UserError(f"unknown classifier '{classifier}'; valid: linear, knn")
    raw = ctx.raw("test")
    geometry, finish = ctx.eval_stages()  # corrupt between the two: at network resolution
    parts = ctx.cache_parts("test", finish)
    res = corruption_eval(
        ctx.model,
        classify,
        raw,
        finish,
        ctx.space,
        tuple(corruptions or CORRUPTIONS),
        tuple(severities),
        indices=ctx.indices("test"),
        seed=ctx.seed,
        extract_kwargs=ctx.extract_kwargs(),
        cache_parts=parts,
        geometry=geometry,
    )
    res["resolution"] = ctx.image_size
    res["num_train"] = len(y_tr)
    res["num_test"] = len(ctx.indices("test") or raw)
    res["table"] = table_for(ctx.image_size, ctx.image_size)
    summary = {"clean": res["clean"], "mean": res["mean"]}
    options = {"classifier": classifier, "severities": list(severities)}
    if classifier == "knn":
        options |= {"k": k, "temperature": temperature}
    return _wrap(ctx, "corruption", summary, res, options)


def no_factors(dataset: str) -> str:
    """The line refusing the factor probes on ``dataset``: only the synthetic set records the
    factors (shape, colour, texture, rotation) that generated each image."""
    return f"dataset '{dataset}' has no generating factors; eval factors needs --dataset synthetic"


def run_factors(
    ctx: EvalContext, names: Sequence[str] = ("shape", "color", "texture", "rotation")
) -> dict:
    from contrastlab.eval.factors import FACTORS, factor_probes
    from contrastlab.eval.rotation import rotation_probe

    bad = [n for n in names if n not in FACTORS]
    if bad:
        raise UserError(f"unknown factor '{bad[0]}'; valid: {', '.join(FACTORS)}")
    if not getattr(ctx.raw("train"), "factors", None):
        raise UserError(no_factors(ctx.data_cfg.name))
    announce(ctx, "factors", f"linear probes of {', '.join(names)}")
    static = [n for n in names if n != "rotation"]
    details: dict[str, Any] = {}
    if static:
        f_tr, _ = ctx.features("train")
        f_te, _ = ctx.features("test")

        def factors(split):
            idx = ctx.indices(split)
            facts = ctx.raw(split).factors
            return {n: facts[n] if idx is None else facts[n][idx] for n in static}

        details.update(
            factor_probes(f_tr, factors("train"), f_te, factors("test"), static, ctx.seed)
        )
    if "rotation" in names:
        f_tr, r_tr = _rotation_features(ctx, "train")
        f_te, r_te = _rotation_features(ctx, "test")
        res = rotation_probe(f_tr, r_tr, f_te, r_te, seed=ctx.seed)
        details["rotation"] = {
            "top1": res["top1"],
            "C": res["C"],
            "num_classes": 4,
            "chance": 25.0,
            **{k: v for k, v in res.items() if k.startswith("num_") and k != "num_classes"},
        }
    summary = {name: details[name]["top1"] for name in names}
    return _wrap(ctx, "factors", summary, details, {"factors": list(names)})


def run_transfer(
    ctx: EvalContext, shots: Sequence[int] = (5, 10), trials: int = 5, num_episodes: int = 600
) -> dict:
    from contrastlab.eval.transfer import transfer_eval

    announce(
        ctx,
        "transfer",
        f"logistic regression, all-way {_shots(shots)} ({trials} draws each) and 5-way "
        f"episodes ({num_episodes} each)",
    )
    f_tr, y_tr = ctx.features("train")
    f_te, y_te = ctx.features("test")
    res = transfer_eval(
        f_tr,
        y_tr,
        f_te,
        y_te,
        ctx.num_classes(),
        shots,
        trials,
        num_episodes=num_episodes,
        seed=ctx.seed,
    )
    without_trivial_top5(res["linear"], ctx.num_classes())
    res["num_classes"] = ctx.num_classes()
    summary = {f"linear {k}": res["linear"][k] for k in ("top1", "top5") if k in res["linear"]}
    for k, v in res["fewshot"]["shots"].items():
        summary[f"{k}-shot"] = v["mean"]
    for k, v in res["episodes"].get("shots", {}).items():
        summary[f"5-way {k}-shot"] = v["mean"]
    return _wrap(ctx, "transfer", summary, res, {"shots": list(shots), "trials": trials})


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------


def _shots(values) -> str:
    """``["1", "5", "10"]`` -> ``"1-, 5- and 10-shot"``."""
    values = [str(v) for v in values]
    if len(values) < 2:
        return f"{''.join(values)}-shot"
    return f"{'-, '.join(values[:-1])}- and {values[-1]}-shot"


def linear_text(mode: str, epochs: int | None = None, lr: float | None = None, C=None) -> str:
    """The linear protocol in the field's words: MoCo's SGD protocol or logistic regression."""
    if mode == "fast":
        fixed = "C swept on a validation split" if C is None else f"C {C:g}"
        return f"logistic regression on features, {fixed}"
    text = "MoCo's SGD protocol on randomly cropped and flipped images"
    if epochs is not None:
        text += f", {epochs} epoch{'s' if epochs != 1 else ''}"
    return text if lr is None else f"{text}, lr {lr:g}"


def knn_text(setup: dict, details: dict) -> str:
    """``k 200, T 0.1, bank of 5,000 training images``: what a kNN vote read."""
    bank = details.get("num_train")
    text = f"k {setup['k']}, T {setup.get('temperature', 0.1):g}"
    return text if bank is None else f"{text}, bank of {bank:,} training images"


def ci_note(result: dict) -> str:
    """What ``±`` means in a result's table: ``± is the 95% confidence interval of the mean
    (Student t) over 5 trials (all-way) / 600 episodes (5-way)``; ``""`` without intervals."""
    summary, details = result.get("summary", {}), result.get("details", {})
    if not any(key.endswith(" ci95") for key in summary):
        return ""
    over = []
    allway, episodes = details.get("allway") or {}, details.get("episodes") or {}
    if "trials" in allway and "skipped" not in allway:
        n = allway["trials"]
        over.append(f"{n} trial{'s' if n != 1 else ''} (all-way)")
    if "episodes" in episodes and "skipped" not in episodes:
        n = episodes["episodes"]
        over.append(f"{n} episode{'s' if n != 1 else ''} ({episodes.get('n_way')}-way)")
    where = f" over {' / '.join(over)}" if over else " over the trials or episodes"
    return f"mean ± 95% confidence interval (Student t){where}"


def skipped_parts(result: dict) -> list[str]:
    """``episodes skipped: <reason>`` for each part of a result that its data could not support."""
    details = result.get("details", {})
    return [
        f"{name} skipped: {part['skipped']}"
        for name, part in (details.items() if isinstance(details, dict) else ())
        if isinstance(part, dict) and "skipped" in part
    ]


def variant_text(result: dict) -> str:
    """What a result's protocol ran, in the field's words, for its heading: ``all-way 5- and
    10-shot: 5 draws each, logistic regression`` rather than the option that chose it
    (``which allway``); ``""`` for a protocol with one form."""
    protocol, setup, details = result["protocol"], result["setup"], result.get("details", {})
    if protocol == "linear" and "mode" in setup:
        return linear_text(setup["mode"], setup.get("epochs"), setup.get("lr"), setup.get("C"))
    if protocol == "knn" and "k" in setup:
        return f"{knn_text(setup, details)}, {details.get('num_test', '?')} test queries"
    if protocol == "corruption" and "classifier" in setup:
        if setup["classifier"] != "knn":
            return "linear classifier on clean training features"
        return f"kNN classifier on clean training features, {knn_text(setup, details)}"
    if protocol == "fewshot":
        parts = []
        allway = details.get("allway")
        if allway and "skipped" not in allway:
            parts.append(
                f"all-way {_shots(allway['shots'])}: {allway['trials']} "
                f"draw{'s' if allway['trials'] != 1 else ''} each, logistic regression"
            )
        episodes = details.get("episodes")
        if episodes and "skipped" not in episodes:
            classifier = {"centroid": "nearest centroid", "logistic": "logistic regression"}
            parts.append(
                f"{episodes['n_way']}-way {_shots(episodes['shots'])} episodes: "
                f"{episodes['episodes']} each, "
                f"{classifier.get(episodes['classifier'], episodes['classifier'])}"
            )
        return "; ".join(parts)
    return ""


def summary_table(result: dict) -> str:
    """The headline numbers as a markdown table; ``x ± ci`` where a 95 % interval exists."""
    summary = result["summary"]
    chance = chance_levels(result)
    rows = []
    for key, value in summary.items():
        if key.endswith(" ci95"):
            continue
        rows.append([key, pm(value, summary.get(f"{key} ci95"))])
        if chance:
            rows[-1].append(chance.get(key))
    setup = result["setup"]
    what = variant_text(result)
    variant = f" ({what})" if what else ""
    # an image folder is named by its path: two folders (pairs, for transfer) read apart
    folder = f" ({setup['data_path']})" if setup.get("dataset") == "imagefolder" else ""
    title = (
        f"**{result['protocol']}**{variant} — {setup.get('run')} ({setup.get('method')}), "
        f"space `{setup.get('space')}`, dataset {setup.get('dataset')}{folder}"
    )
    header = ["metric", "accuracy (%)"] + (["chance (%)"] if chance else [])
    text = title + "\n\n" + markdown_table(header, rows)
    if ci_note(result):
        text += f"\n\naccuracy: {ci_note(result)}"
    for line in skipped_parts(result):
        text += f"\n\n{line}"
    classes = result.get("details", {}).get("num_classes")
    if classes is not None and trivial_top5(classes):
        text += f"\n\ntop-5 left out: with {plural(classes, 'class')} it is 100% by construction"
    if result["protocol"] == "corruption":
        det = result["details"]
        sevs = (
            list(next(iter(det["corruptions"].values()))["by_severity"])
            if det["corruptions"]
            else []
        )
        body = [
            [name, *v["by_severity"].values(), v["mean"]] for name, v in det["corruptions"].items()
        ]
        text += "\n\n" + markdown_table(["corruption", *[f"s{s}" for s in sevs], "mean"], body)
    return text
