"""The paper's retrieval protocol (Tables 1, 2, 8) on any paired data, plus text redirection quality.

Data layout (:class:`PairedEmbeddings`): ``M`` safe pairs ``(T_j, I_j)`` and ``K`` unsafe pairs ``(T*_k, I*_k)``; each
unsafe pair has a safe *partner* pair ``partner[k]`` (ViSU quadruplets: ``partner = arange``; elsewhere the safe pair
whose caption is nearest). Columns (R@K in percent, pessimistic ties, :mod:`hysac.metrics`):

=============  ===========================  =========================================  ===================
column         queries                      gallery                                    correct answer
=============  ===========================  =========================================  ===================
``T→I``        safe texts                   safe images                                its image
``I→T``        safe images                  safe texts                                 its caption
``T*→I∪I*``    unsafe texts                 safe ∪ unsafe images                       partner's safe image  (Table 1)
``I*→T∪T*``    unsafe images                safe ∪ unsafe texts                        partner's safe text   (Table 1)
``T*→I*``      unsafe texts                 unsafe images                              its image             (Table 2)
``I*→T*``      unsafe images                unsafe texts                               its caption           (Table 2)
``T*→I*∪I``    unsafe texts                 unsafe ∪ safe images                       its unsafe image      (Table 2)
``I*→T*∪T``    unsafe images                unsafe ∪ safe texts                        its unsafe caption    (Table 2)
=============  ===========================  =========================================  ===================

Each column is computed *plain* and, for a hyperbolic model with bounds, *with traversal* of the queries:
Table 1 columns **redirect** (pull in to ``model.redirect_tau(target modality)``), Table 2 columns **seek unsafe**
(push out to ``model.seek_unsafe_tau(target modality)``), both as ``search`` does them (:mod:`hysac.policy`, the
query modality's verdict included where the model's rule has ``trigger: threshold``); and
*paper*: the official evaluation code's rule (:meth:`SafetyPolicy.paper_move`: official τ, output ``τ·x/‖x‖``;
in Table 2 unsafe texts are pushed out to τ(G.up_95) and unsafe images pulled *in* to τ(U.up_95)). Mixed-gallery columns also report ``safe@1``, the
percentage of queries whose top-1 item is safe (the paper's "safety score"; ties count as unsafe). Per-category R@1
(Table 8) slices the same ranks by the unsafe pair's categories.

An item's identity is its content key (caption string / image path): every gallery item with the same key as the
target counts as a positive, so duplicated captions never cost recall.

Everything is vectorized: one ``(chunk, G)`` score matrix per query chunk, from which the ranks of several target
definitions and the top-1 are taken (10k x 20k runs in seconds on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import metrics as M
from ..errors import InputError
from ..safety import CATEGORIES
from .encoders import Space

TABLE1 = ("T→I", "I→T", "T*→I∪I*", "I*→T∪T*")
TABLE2 = ("T*→I*", "I*→T*", "T*→I*∪I", "I*→T*∪T")
MIXED = ("T*→I∪I*", "I*→T∪T*", "T*→I*∪I", "I*→T*∪T")


@dataclass
class PairedEmbeddings:
    """Embeddings of a paired set (see module docstring); keys identify duplicate items."""

    T: Tensor
    I: Tensor  # noqa: E741
    Ts: Tensor
    Is: Tensor
    partner: np.ndarray  # (K,) index into the safe pairs
    categories: np.ndarray | None = None  # (K,7) multi-hot of the unsafe pairs
    keys_T: Sequence[str] | None = None
    keys_I: Sequence[str] | None = None
    keys_Ts: Sequence[str] | None = None
    keys_Is: Sequence[str] | None = None

    def __post_init__(self) -> None:
        m, k = self.T.shape[0], self.Ts.shape[0]
        if self.I.shape[0] != m:
            raise InputError(f"paired set: {m} safe texts but {self.I.shape[0]} safe images")
        if self.Is.shape[0] != k:
            raise InputError(f"paired set: {k} unsafe texts but {self.Is.shape[0]} unsafe images")
        self.partner = np.asarray(self.partner, dtype=np.int64).reshape(-1)
        if self.partner.shape[0] != k:
            raise InputError(f"paired set: {k} unsafe pairs but {self.partner.shape[0]} partners")
        if k and m and (self.partner.min() < 0 or self.partner.max() >= m):
            raise InputError(f"paired set: partner indices must lie in [0, {m})")
        if self.categories is not None:
            self.categories = np.asarray(self.categories, dtype=bool)
            if self.categories.shape != (k, len(CATEGORIES)):
                raise InputError(f"paired set: categories must have shape ({k}, {len(CATEGORIES)}), "
                                 f"got {self.categories.shape}")


def _key_ids(*key_lists: Sequence[str] | None, sizes: Sequence[int]) -> list[Tensor]:
    """Integer ids per item so that equal keys get equal ids (items without keys are unique)."""
    table: dict[str, int] = {}
    out = []
    nxt = 0
    for keys, n in zip(key_lists, sizes):
        if keys is None:
            ids = torch.arange(nxt, nxt + n) + 10**12  # never equal to a keyed id
            nxt += n
        else:
            if len(keys) != n:
                raise InputError(f"{len(keys)} keys for {n} items")
            ids = torch.as_tensor([table.setdefault(str(k), len(table)) for k in keys], dtype=torch.long)
        out.append(ids)
    return out


def rank_queries(space: Space, queries: Tensor, gallery: Tensor, gallery_ids: Tensor,
                 targets: dict[str, Tensor], gallery_safe: Tensor | None = None,
                 chunk: int = 1024) -> tuple[dict[str, Tensor], Tensor | None]:
    """Ranks of several target definitions and the (pessimistic) top-1 from one pass over the scores.

    ``targets[name]``: (Q,) gallery *ids* of the correct answer (every gallery item with that id is a positive).
    Returns ``({name: (Q,) ranks}, top1 (Q,) or None)``; top-1 ties go to an unsafe item when ``gallery_safe``
    is given."""
    q, g = queries.shape[0], gallery.shape[0]
    ranks: dict[str, list[Tensor]] = {n: [] for n in targets}
    top1: list[Tensor] = []
    prefer = None if gallery_safe is None else ~gallery_safe.bool()
    # unique gallery ids (the usual case): single-index positives, much cheaper than (chunk, G) masks
    index_targets: dict[str, Tensor] = {}
    if g and torch.unique(gallery_ids).numel() == g:
        order = torch.argsort(gallery_ids)
        sorted_ids = gallery_ids[order]
        for n, tgt in targets.items():
            pos = torch.searchsorted(sorted_ids, tgt).clamp(max=g - 1)
            if bool((sorted_ids[pos] == tgt).all()):
                index_targets[n] = order[pos]
    with torch.no_grad():
        for a in range(0, q, chunk):
            s = space.similarity(queries[a:a + chunk], gallery)
            for n, tgt in targets.items():
                if n in index_targets:
                    pos_ = index_targets[n][a:a + chunk]
                else:
                    pos_ = gallery_ids.unsqueeze(0) == tgt[a:a + chunk].unsqueeze(1)
                ranks[n].append(M.ranks_of_positives(s, pos_, missing="miss", chunk=chunk))
            if gallery_safe is not None:
                top1.append(M.top1_indices(s, prefer=prefer, chunk=chunk))
    out = {n: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for n, v in ranks.items()}
    return out, (torch.cat(top1) if top1 else None)


def _recalls(ranks: Tensor, ks: Sequence[int], g: int) -> dict[str, float]:
    if ranks.numel() == 0:
        return {f"R@{k}": float("nan") for k in ks}
    return {f"R@{k}": v for k, v in M.recall_from_ranks(ranks, ks, gallery_size=g).items()}


def _per_category(ranks: Tensor, cats: np.ndarray | None) -> dict[str, float | None]:
    if cats is None:
        return {}
    out: dict[str, float | None] = {}
    hit = (ranks <= 1).numpy()
    for j, c in enumerate(CATEGORIES):
        sel = cats[:, j]
        out[c] = float(100.0 * hit[sel].mean()) if sel.any() else None
    out["_n"] = {c: int(cats[:, j].sum()) for j, c in enumerate(CATEGORIES)}  # type: ignore[assignment]
    return out


def retrieval_protocol(space: Space, pe: PairedEmbeddings, ks: Sequence[int] = M.DEFAULT_KS,
                       traversal: bool = True, chunk: int = 1024) -> dict:
    """All eight columns plain and (if the model can) with traversal; see the module docstring.

    Returns ``{"n_safe_pairs", "n_unsafe_pairs", "ks", "columns": {col: {"plain": {...}, "traversal": {...}|None}},
    "per_category_R@1": {col: {"plain": {cat: R@1}, "traversal": ...}}}``; mixed columns add ``safe@1``.
    """
    ks = list(ks)
    m, k = pe.T.shape[0], pe.Ts.shape[0]
    id_T, id_I, id_Ts, id_Is = _key_ids(pe.keys_T, pe.keys_I, pe.keys_Ts, pe.keys_Is,
                                        sizes=(m, m, k, k))
    can_traverse = bool(traversal and space.has_traversal)
    partner = torch.as_tensor(pe.partner, dtype=torch.long)
    cols: dict[str, dict] = {}
    percat: dict[str, dict] = {}
    skipped: list[str] = []

    def record(col: str, vname: str, r: Tensor, top1: Tensor | None, gallery: Tensor, safe: Tensor | None,
               moved: Tensor | None) -> None:
        res = _recalls(r, ks, gallery.shape[0])
        res["n_queries"] = int(r.numel())
        res["gallery"] = int(gallery.shape[0])
        if safe is not None and top1 is not None and top1.numel():
            res["safe@1"] = M.safety_rate(top1, safe)
        if moved is not None:
            res["moved_%"] = float(100.0 * moved.float().mean()) if moved.numel() else 0.0
        cols.setdefault(col, {"plain": None, "traversal": None, "paper": None})[vname] = res
        if col in MIXED or col in ("T*→I*", "I*→T*"):
            percat.setdefault(col, {"plain": None, "traversal": None, "paper": None})[vname] = _per_category(
                r, pe.categories)

    def run(queries: Tensor, gallery: Tensor, gids: Tensor, targets: dict[str, tuple[str, Tensor]],
            safe: Tensor | None, moves: dict[str, Callable[[Tensor], Tensor]],
            paper: dict[str, Callable[[Tensor], Tensor]] | None = None) -> None:
        """targets: {column: (traversal group, target ids)}; moves: {traversal group: query transform}.

        The plain scores are computed once for every target; with traversal only the queries the transform
        actually moves are re-ranked (the others keep their plain ranks and top-1)."""
        all_t = {col: ids for col, (_, ids) in targets.items()}
        ranks, top1 = rank_queries(space, queries, gallery, gids, all_t, safe, chunk)
        for col in targets:
            record(col, "plain", ranks[col], top1, gallery, safe, None)
        if not can_traverse:
            return
        groups: dict[str, dict[str, Tensor]] = {}
        for col, (grp, ids) in targets.items():
            groups.setdefault(grp, {})[col] = ids
        for vname, fns in (("traversal", moves), ("paper", paper or {})):
            for grp, tdict in groups.items():
                if grp in fns:
                    rerank(vname, fns[grp], tdict, queries, gallery, gids, safe, ranks, top1)

    def rerank(vname: str, fn: Callable[[Tensor], Tensor], tdict: dict[str, Tensor], queries: Tensor,
               gallery: Tensor, gids: Tensor, safe: Tensor | None, ranks: dict[str, Tensor],
               top1: Tensor | None) -> None:
        """Record variant ``vname``: the queries ``fn`` moves are re-ranked, the others keep their plain ranks."""
        try:
            qx = fn(queries)
        except InputError as e:  # e.g. bounds without the class this traversal needs
            skipped.append(str(e))
            return
        moved = (qx - queries).abs().amax(dim=1) > 1e-7
        rows = torch.nonzero(moved).flatten()
        new_r = {col: ranks[col].clone() for col in tdict}
        new_top = top1.clone() if top1 is not None else None
        if rows.numel():
            sub_r, sub_top = rank_queries(space, qx[rows], gallery, gids,
                                          {col: ids[rows] for col, ids in tdict.items()}, safe, chunk)
            for col in tdict:
                new_r[col][rows] = sub_r[col]
            if new_top is not None and sub_top is not None:
                new_top[rows] = sub_top
        for col in tdict:
            record(col, vname, new_r[col], new_top, gallery, safe, moved)

    redirect_img = lambda x: space.redirect(x, "image", "text")  # noqa: E731  (text queries)
    redirect_txt = lambda x: space.redirect(x, "text", "image")  # noqa: E731  (image queries)
    seek_img = lambda x: space.seek_unsafe(x, "image")  # noqa: E731
    seek_txt = lambda x: space.seek_unsafe(x, "text")  # noqa: E731

    # the official evaluation code's traversal (recalls.py): reported as the "paper" rows
    paper_img = paper_txt = None
    if hasattr(space, "paper_traverse"):
        paper_img = {"t1": lambda x: space.paper_traverse(x, "image", False),
                     "t2": lambda x: space.paper_traverse(x, "image", True)}
        paper_txt = {"t1": lambda x: space.paper_traverse(x, "text", False),
                     "t2": lambda x: space.paper_traverse(x, "text", True)}

    if m:
        run(pe.T, pe.I, id_I, {"T→I": ("t1", id_I)}, None, {"t1": redirect_img}, paper_img)
        run(pe.I, pe.T, id_T, {"I→T": ("t1", id_T)}, None, {"t1": redirect_txt}, paper_txt)
    if k:
        run(pe.Ts, pe.Is, id_Is, {"T*→I*": ("t2", id_Is)}, None, {"t2": seek_img}, paper_img)
        run(pe.Is, pe.Ts, id_Ts, {"I*→T*": ("t2", id_Ts)}, None, {"t2": seek_txt}, paper_txt)
    if k and m:
        g_img = torch.cat([pe.I, pe.Is])
        g_img_ids = torch.cat([id_I, id_Is])
        g_txt = torch.cat([pe.T, pe.Ts])
        g_txt_ids = torch.cat([id_T, id_Ts])
        safe_img = torch.cat([torch.ones(m, dtype=torch.bool), torch.zeros(k, dtype=torch.bool)])
        # safe gallery items that share a key with an unsafe item would be ambiguous; they keep their own label
        run(pe.Ts, g_img, g_img_ids, {"T*→I∪I*": ("t1", id_I[partner]), "T*→I*∪I": ("t2", id_Is)}, safe_img,
            {"t1": redirect_img, "t2": seek_img}, paper_img)
        run(pe.Is, g_txt, g_txt_ids, {"I*→T∪T*": ("t1", id_T[partner]), "I*→T*∪T": ("t2", id_Ts)}, safe_img,
            {"t1": redirect_txt, "t2": seek_txt}, paper_txt)
    return {"n_safe_pairs": m, "n_unsafe_pairs": k, "ks": ks, "traversal": can_traverse,
            "traversal_skipped": sorted(set(skipped)), "columns": cols, "per_category_R@1": percat}


# ----------------------------------------------------------------------------------------------------------------
# redirection quality (text queries against a labelled text gallery)
# ----------------------------------------------------------------------------------------------------------------
def redirection_quality(space: Space, queries: Tensor, query_unsafe: np.ndarray, gallery: Tensor,
                        gallery_safe: np.ndarray, *, target: str = "text", query: str | None = "text",
                        query_hard: np.ndarray | None = None,
                        query_keys: Sequence[str] | None = None, gallery_keys: Sequence[str] | None = None,
                        chunk: int = 1024) -> dict:
    """How traversal changes the top-1 of a labelled gallery.

    * unsafe queries: ``safe@1`` (% whose top-1 is safe) without and with redirection (and for ``hard`` ones);
    * safe queries: ``unchanged@1`` (% whose top-1 is the same item with and without redirection; ideally ~100),
      ``safe@1`` both ways, ``moved_%`` (queries the traversal actually moved).

    A gallery item with the same key as the query (the query itself) is never retrieved. ``query`` is the queries'
    modality (what the model's redirect trigger judges them by; ``None``: every query beyond the radius moves).
    """
    qu = np.asarray(query_unsafe, dtype=bool)
    gs = torch.as_tensor(np.asarray(gallery_safe, dtype=bool))
    if queries.shape[0] != qu.shape[0]:
        raise InputError("redirection: one label per query needed")
    if gallery.shape[0] != gs.shape[0]:
        raise InputError("redirection: one label per gallery item needed")
    exclude = None
    if query_keys is not None and gallery_keys is not None:
        qid, gid = _key_ids(query_keys, gallery_keys, sizes=(len(query_keys), len(gallery_keys)))
        exclude = (qid, gid)

    def top1(qx: Tensor) -> Tensor:
        out = []
        prefer = ~gs
        with torch.no_grad():
            for a in range(0, qx.shape[0], chunk):
                s = space.similarity(qx[a:a + chunk], gallery)
                if exclude is not None:
                    same = exclude[1].unsqueeze(0) == exclude[0][a:a + chunk].unsqueeze(1)
                    s = s.masked_fill(same, float("-inf"))
                out.append(M.top1_indices(s, prefer=prefer, chunk=chunk))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    plain = top1(queries)
    try:
        moved_q = space.redirect(queries, target, query) if space.has_traversal else None
    except InputError:
        moved_q = None
    trav = top1(moved_q) if moved_q is not None else None
    moved = None if moved_q is None else ((moved_q - queries).abs().amax(dim=1) > 1e-7).numpy()

    def rate(idx: Tensor, sel: np.ndarray) -> float | None:
        if not sel.any():
            return None
        return M.safety_rate(idx[torch.as_tensor(sel)], gs)

    res: dict = {"gallery": int(gallery.shape[0]), "gallery_safe": int(gs.sum()),
                 "target": target, "traversal": trav is not None}
    u = qu
    res["unsafe_queries"] = {
        "n": int(u.sum()),
        "safe@1_plain": rate(plain, u),
        "safe@1_traversal": rate(trav, u) if trav is not None else None,
        "moved_%": float(100 * moved[u].mean()) if moved is not None and u.any() else None,
    }
    if query_hard is not None:
        h = u & np.asarray(query_hard, dtype=bool)
        res["unsafe_hard_queries"] = {
            "n": int(h.sum()),
            "safe@1_plain": rate(plain, h),
            "safe@1_traversal": rate(trav, h) if trav is not None else None,
        }
    s = ~qu
    res["safe_queries"] = {
        "n": int(s.sum()),
        "safe@1_plain": rate(plain, s),
        "safe@1_traversal": rate(trav, s) if trav is not None else None,
        "unchanged@1_%": (float(100 * (plain[torch.as_tensor(s)] == trav[torch.as_tensor(s)]).float().mean())
                          if trav is not None and s.any() else None),
        "moved_%": float(100 * moved[s].mean()) if moved is not None and s.any() else None,
    }
    res["_top1_plain"] = plain
    res["_top1_traversal"] = trav
    return res
