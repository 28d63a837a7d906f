"""The E(3)-equivariant H(0)-correction transformer.

Inputs per directed edge (i, j, R): the H(0) and S blocks decomposed into irreps
(l1 ⊗ l2 → ⊕L), the edge vector; per atom: its element (0 = unknown) and its
on-site H(0), S blocks. Node features are refined by attention-weighted
equivariant message passing (tensor products with spherical harmonics, weights
from invariant edge features, attention logits from invariants only, gated
non-linearities). Each edge's correction is an equivariant function of its own
H(0)/S irreps (scaled channel-wise by learned invariants) and of h_i ⊗ h_j.
Outputs are symmetrised over the edge and its mirror so that the corrected H is
exactly hermitian (and, for SOC, time-reversal symmetric: ΔH = Δa ⊗ 1 + i Δb·σ
with real Δa = Δa(-R)^T, Δb = -Δb(-R)^T).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import e3nn
import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import nn

from .config import ModelConfig
from .elements import element_embedding
from .fused import BilinearTable, FusedTensorProduct
from .graph import Graph
from .irreps import BasisLayout, BlockIrreps, BlockSparseMap, shell_pair_groups


class MLP(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def bessel(r: torch.Tensor, n: int, r_max: float) -> torch.Tensor:
    """(E, n) radial Bessel basis sin(kπr/rc)/r with a smooth polynomial cutoff; r in Å (r = 0 allowed)."""
    k = torch.arange(1, n + 1, dtype=r.dtype, device=r.device) * math.pi / r_max
    rr = r.clamp_min(1e-6)[:, None]
    val = torch.where(r[:, None] > 1e-6, torch.sin(k * rr) / rr, k.expand(len(r), n))
    x = (r / r_max).clamp(max=1.0)
    env = 1 - 10 * x**3 + 15 * x**4 - 6 * x**5
    return val * env[:, None] * math.sqrt(2 / r_max)


def envelope(r: torch.Tensor, r_max: float) -> torch.Tensor:
    x = (r / r_max).clamp(max=1.0)
    return 1 - 10 * x**3 + 15 * x**4 - 6 * x**5


def segment_softmax(logits: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    mx = torch.full((n,), -1e30, dtype=logits.dtype, device=logits.device)
    mx = mx.scatter_reduce(0, index, logits, reduce="amax", include_self=True)
    e = torch.exp(logits - mx[index])
    den = torch.zeros(n, dtype=logits.dtype, device=logits.device).index_add(0, index, e)
    return e / den[index].clamp_min(1e-30)


def _gate_for(irreps: o3.Irreps) -> Gate:
    scalars = o3.Irreps([(m, ir) for m, ir in irreps if ir.l == 0])
    gated = o3.Irreps([(m, ir) for m, ir in irreps if ir.l > 0])
    acts = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
    return Gate(scalars, acts, gates, [torch.sigmoid] if gated.num_irreps else [], gated)


def _irrep_instance_index(irreps: o3.Irreps) -> torch.Tensor:
    """(irreps.dim,) index of the irrep instance each component belongs to."""
    idx, k = [], 0
    for mul, ir in irreps:
        for _ in range(mul):
            idx += [k] * ir.dim
            k += 1
    return torch.tensor(idx, dtype=torch.long)


def instance_norms(x: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    sq = torch.zeros(x.shape[0], n, dtype=x.dtype, device=x.device).index_add(1, index, x * x)
    return torch.sqrt(sq + 1e-12)


@contextmanager
def plain_einsum_codegen() -> Iterator[None]:
    """e3nn modules built inside this block skip opt_einsum's contraction-order search in their generated
    code (e3nn's ``optimize_einsums`` default, restored on exit). That search took 2 of the 3 s of loading
    the bundled two-network model, which dominated `predict` on small cells; the generated code computes
    the same map, and it runs only above ``fused_max_rows`` rows, where the forward's speed was the same
    within noise (128-atom Si and AlP SOC supercells)."""
    saved = e3nn.get_optimization_defaults()
    e3nn.set_optimization_defaults(optimize_einsums=False)
    try:
        yield
    finally:
        e3nn.set_optimization_defaults(**saved)


class HamiltonianCorrection(nn.Module):
    """ΔH for every directed edge of a Graph: (E, n, n) eV, and the SOC part (E, n, n, 3) eV or None."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        with plain_einsum_codegen():
            self._build(cfg)

    def _build(self, cfg: ModelConfig) -> None:
        """The modules of a network of configuration ``cfg`` (see ``__init__``)."""
        self.cfg = cfg
        self.layout = BasisLayout(tuple(tuple(s) for s in cfg.layout))
        self.blocks = BlockIrreps(self.layout)
        bir = self.blocks.irreps
        self.irreps_block = bir
        self.irreps_in = (bir + bir)  # H(0) irreps ⊕ S irreps
        self.irreps_hidden = o3.Irreps(cfg.hidden_irreps)
        self.irreps_sh = o3.Irreps.spherical_harmonics(cfg.sh_lmax)
        # block ⇄ irreps map, applied per shell pair (the dense 729² product dominated small-cell inference)
        self.block_map = BlockSparseMap(self.blocks.matrix, shell_pair_groups(self.layout))
        self.register_buffer("in_index", _irrep_instance_index(self.irreps_in), persistent=False)
        self.register_buffer("out_index", _irrep_instance_index(bir), persistent=False)
        n_norm = self.irreps_in.num_irreps
        self.embed = element_embedding(cfg.embed_dim, cfg.element_descriptors)
        n_scal = cfg.num_rbf + 2 * cfg.embed_dim + n_norm + 1
        self.edge_mlp = MLP([n_scal, cfg.mlp_hidden, cfg.mlp_hidden])
        h = self.irreps_hidden
        self.node_in = o3.Linear(self.irreps_in + o3.Irreps(f"{cfg.embed_dim}x0e"), h)
        n0 = h.count("0e")
        self.convs = nn.ModuleList()
        self.conv_w = nn.ModuleList()
        self.attn = nn.ModuleList()
        self.pre_gate = nn.ModuleList()
        self.gates = nn.ModuleList()
        for _ in range(cfg.num_layers):
            tp = o3.FullyConnectedTensorProduct(h, self.irreps_sh, h, shared_weights=False, internal_weights=False)
            self.convs.append(tp)
            self.conv_w.append(nn.Linear(cfg.mlp_hidden, tp.weight_numel))
            self.attn.append(MLP([cfg.mlp_hidden + 2 * n0, cfg.mlp_hidden, 1]))
            gate = _gate_for(h)
            self.pre_gate.append(o3.Linear(h, gate.irreps_in))
            self.gates.append(gate)
        self.edge_lin = o3.Linear(self.irreps_in, bir)
        self.pair_tp = o3.FullyConnectedTensorProduct(h, h, bir)
        # the same products evaluated with grouped operations (index tables only: the e3nn modules keep
        # the weights, so parameters and model files are unchanged); 1.7x faster than one einsum per path
        self.convs_fused = nn.ModuleList(FusedTensorProduct(tp) for tp in self.convs)
        self.pair_fused = FusedTensorProduct(self.pair_tp)
        self.channel_gate = MLP([cfg.mlp_hidden + 2 * n0, cfg.mlp_hidden, bir.num_irreps])
        # per-atom, per-shell potential shifts v_i[shell]: ΔH_ij += ½ (v_i[a] + v_j[b]) S_ij[a, b]
        # (the self-consistent change of the local potential; equivariant since each shell-pair
        # sub-block is only scaled)
        self.register_buffer("slot_of", torch.tensor(self._slot_of_orbital(), dtype=torch.long), persistent=False)
        n_slots = len(self.layout.shells)
        self.potential = MLP([self.irreps_hidden.count("0e") + cfg.embed_dim, cfg.mlp_hidden, n_slots])
        with torch.no_grad():
            self.potential.net[-1].weight.zero_()
            self.potential.net[-1].bias.zero_()
        self.out_lin = o3.Linear(bir, bir)
        with torch.no_grad():  # start from ΔH = 0, i.e. from H(0) itself
            for w in self.out_lin.parameters():
                w.zero_()
        if cfg.trace_feedback:
            # trace-based non-linearity: t_e = log(1 + |ΔH_e projected on each irrep|) (the square root of
            # Tr(B_L B_Lᵀ) of the predicted block's L-th part; invariant) feeds back as a second gate on
            # the edge's irreps, with the on-site invariants τ_i, τ_j of both atoms; τ_i also shifts
            # atom i's shell potentials. Both start at exactly zero.
            n_out = bir.num_irreps
            shells = torch.as_tensor(self.blocks.instance_shells, dtype=torch.long)
            self.register_buffer("inst_row", shells[:, 0], persistent=False)
            self.register_buffer("inst_col", shells[:, 1], persistent=False)
            self.register_buffer("slot_first", torch.tensor([o for _l, _z, o in self.layout.shells]), persistent=False)
            self.trace_gate = MLP([cfg.mlp_hidden + 2 * n0 + 3 * n_out, cfg.mlp_hidden, n_out])
            self.trace_potential = MLP([n0 + n_out, cfg.mlp_hidden, n_slots])
            with torch.no_grad():
                for mlp in (self.trace_gate, self.trace_potential):
                    mlp.net[-1].weight.zero_()
                    mlp.net[-1].bias.zero_()
        if cfg.long_range:
            self.charge = MLP([n0 + cfg.embed_dim, cfg.mlp_hidden, 1])
            self.ewald_response = nn.Parameter(torch.zeros(n_slots))
        if cfg.edge_messages:
            etp = o3.FullyConnectedTensorProduct(h, self.irreps_sh, h, shared_weights=False, internal_weights=False)
            self.edge_tp = etp
            self.edge_tp_w = nn.Linear(cfg.mlp_hidden, etp.weight_numel)
            self.edge_tp_fused = FusedTensorProduct(etp)
            self.edge_out = o3.Linear(h, bir)
            with torch.no_grad():
                for w in self.edge_out.parameters():
                    w.zero_()
        if cfg.bond_env:
            c = cfg.env_channels
            self.irreps_env = o3.Irreps([(c, (l, (-1) ** l)) for l in range(4)])
            self.irreps_env_sh = o3.Irreps.spherical_harmonics(3)
            # 1 for the l = 0 component of the edge spherical harmonics, 0 for the rest
            self.register_buffer("sh_l0", (torch.arange(self.irreps_sh.dim) == 0).to(torch.get_default_dtype()),
                                 persistent=False)
            self.env_radial = MLP([2 * cfg.num_rbf + cfg.embed_dim, cfg.mlp_hidden, 4 * c])
            self.env_tp = o3.FullyConnectedTensorProduct(self.irreps_env, self.irreps_sh, h)
            self.env_tp_fused = FusedTensorProduct(self.env_tp)
            self.env_out = o3.Linear(h, bir)
            with torch.no_grad():
                for w in self.env_out.parameters():
                    w.zero_()
        if cfg.density_features:
            # the zeroth-step density matrix's block irreps: onto the correction (before the channel gates),
            # their invariants into the edge scalars, the on-site ones into the node features; all from zero
            self.dm_edge = o3.Linear(bir, bir)
            self.dm_scalars = MLP([bir.num_irreps, cfg.mlp_hidden, cfg.mlp_hidden])
            self.dm_node = o3.Linear(bir, h)
            with torch.no_grad():
                for w in list(self.dm_edge.parameters()) + list(self.dm_node.parameters()) + list(
                        self.dm_scalars.net[-1].parameters()):
                    w.zero_()
        if cfg.local_potential is not None:
            # coefficients c_km (eV) of atom k's Gaussians g_m in ΔV(r); ΔH += Σ c_km ⟨φ_i|g_m(k)|φ_j⟩
            self.local_pot = MLP([n0 + cfg.embed_dim, cfg.mlp_hidden, len(cfg.local_potential)])
            with torch.no_grad():
                self.local_pot.net[-1].weight.zero_()
                self.local_pot.net[-1].bias.zero_()
        if cfg.spin_head:
            bsp = self.blocks.irreps_spin
            self.irreps_spin = bsp
            # the spin-part Clebsch–Gordan map, applied per shell pair (its dense 2187² product dominated SOC inference)
            self.spin_map = BlockSparseMap(self.blocks.matrix_spin, shell_pair_groups(self.layout, spin=True))
            self.register_buffer("spin_index", _irrep_instance_index(bsp), persistent=False)
            self.spin_lin = o3.Linear(bsp + self.irreps_in, bsp)
            self.spin_gate = MLP([cfg.mlp_hidden + 2 * n0, cfg.mlp_hidden, bsp.num_irreps])
            self.spin_out = o3.Linear(bsp, bsp)
            with torch.no_grad():  # start from "H(0)'s SOC is already right"
                for w in self.spin_out.parameters():
                    w.zero_()

    # --------------------------------------------------------------------------------
    def _slot_of_orbital(self) -> list[int]:
        out = []
        for k, (l, _z, _o) in enumerate(self.layout.shells):
            out += [k] * (2 * l + 1)
        return out

    #: parameters a model file may lack: zero-initialised extensions (fine-tuning an older model into them)
    optional_prefixes: tuple[str, ...] = ("trace_gate.", "trace_potential.", "charge.", "ewald_response", "edge_tp.",
                                          "edge_tp_w.", "edge_tp_fused.", "edge_out.", "env_radial.", "env_tp.",
                                          "env_tp_fused.", "env_out.", "dm_edge.", "dm_scalars.", "dm_node.",
                                          "local_pot.")

    def _scalars(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, : self.irreps_hidden.count("0e")]

    #: edges processed at once in the per-edge stages (bounds memory for big cells; no effect on results)
    edge_chunk: int = 8192

    def _chunks(self, n: int):
        step = max(1, int(self.edge_chunk))
        for a in range(0, n, step):
            yield slice(a, min(n, a + step))

    #: rows (edges) up to which the fused tensor products are used; above, e3nn's per-path evaluation of
    #: the same map is as fast or faster (memory-bound; see model.fused)
    fused_max_rows: int = 2048

    def _tensor_product(self, fused: FusedTensorProduct, tp: o3.TensorProduct, x1: torch.Tensor, x2: torch.Tensor,
                        weight: torch.Tensor | None = None) -> torch.Tensor:
        """tp(x1, x2[, weight]) (shared weights: the module's own), through ``fused`` for small inputs."""
        if x1.shape[0] <= self.fused_max_rows:
            return fused(x1, x2, tp.weight if weight is None else weight)
        return tp(x1, x2) if weight is None else tp(x1, x2, weight)

    #: edges from which, at inference, the pair term h_i ⊗ h_j is evaluated as a dense bilinear form
    #: (``fused.BilinearTable``); below it the per-path products are about as fast (the whole forward
    #: within -6% to +13% at 54 to 128 atoms; 17% faster on the 432-atom SOC cell); 0 disables it
    pair_table_min_edges: int = 16384

    def _pair_table_for(self, n_edges: int) -> BilinearTable | None:
        """The pair term's bilinear table when this forward should use it (no autograd, a big graph),
        else None; kept between calls and remade when the weights have changed."""
        if torch.is_grad_enabled() or self.pair_table_min_edges <= 0 or n_edges < self.pair_table_min_edges:
            return None
        w = self.pair_tp.weight
        table = getattr(self, "_pair_table", None)
        if table is None or table.stale(w):
            table = BilinearTable(self.pair_tp, w)
            object.__setattr__(self, "_pair_table", table)  # a cache, not state: never saved or moved
        return table

    def forward(self, g: Graph) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ΔH (E, n, n) eV and the SOC part (E, n, n, 3) eV or None, for every edge of g; with
        ``r_corr`` set, edges longer than it get exactly zero and are left out of the network."""
        if self.cfg.r_corr is None:
            return self._forward(g)
        keep = torch.linalg.norm(g.edge_vec, dim=1) <= self.cfg.r_corr
        keep = keep & keep[g.mirror]  # mirror-closed, whatever the rounding of |r|
        if bool(keep.all()):
            return self._forward(g)
        blocks, spin = self._forward(g.subgraph(keep))
        rows = torch.nonzero(keep, as_tuple=False).squeeze(1)

        def scatter(x: torch.Tensor) -> torch.Tensor:
            return x.new_zeros((len(keep),) + tuple(x.shape[1:])).index_copy(0, rows, x)

        return scatter(blocks), None if spin is None else scatter(spin)

    def _forward(self, g: Graph) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.cfg
        n = self.layout.size
        E = len(g.edge_src)
        n_atoms = len(g.z)
        single = E <= self.edge_chunk
        cache: dict[str, torch.Tensor] = {}

        def kept_when_whole(key: str, sl: slice | torch.Tensor, compute) -> torch.Tensor:
            """compute(sl), kept under ``key`` when sl is a chunk holding every edge (computed once)."""
            whole = single and isinstance(sl, slice)
            if whole and key in cache:
                return cache[key]
            x = compute(sl)
            if whole:
                cache[key] = x
            return x

        def edge_inputs(sl: slice | torch.Tensor) -> torch.Tensor:
            """H(0)/h0_scale ⊕ S irreps of the edges sl (a chunk, or an index tensor)."""

            def compute(sl):
                h0, s = g.h0[sl], g.s[sl]
                e = h0.shape[0]
                ir = self.block_map(torch.cat([(h0 / cfg.h0_scale).reshape(e, n * n), s.reshape(e, n * n)]))
                return torch.cat([ir[:e], ir[e:]], dim=1)

            return kept_when_whole("x", sl, compute)

        density = cfg.density_features
        if density and g.dm is None:
            raise ValueError("a density-feature model needs the graph's zeroth-step density (build_graph(..., density=True))")

        def dm_inputs(sl: slice | torch.Tensor) -> torch.Tensor:
            """Block irreps of the zeroth-step density matrix of the edges sl."""
            return kept_when_whole("xd", sl, lambda sl: self.block_map(g.dm[sl].reshape(-1, n * n)))

        table = self._pair_table_for(E)

        def pair_term(sl: slice | torch.Tensor) -> torch.Tensor:
            """h_i ⊗ h_j of the edges in sl, computed once per atom pair (periodic images share it)."""
            key = g.edge_src[sl] * n_atoms + g.edge_dst[sl]
            uniq, inv = torch.unique(key, return_inverse=True)
            i, j = uniq // n_atoms, uniq % n_atoms
            if table is not None:  # big cells at inference: the dense bilinear form, one A_i per atom
                if "A" not in cache:
                    cache["A"] = table.left(h)
                return table.pairs(cache["A"], h, i, j)[inv]
            return self._tensor_product(self.pair_fused, self.pair_tp, h[i], h[j])[inv]

        r = torch.linalg.norm(g.edge_vec, dim=1)
        x_node = xd_node = None
        s_parts, size_parts = [], []
        on_all = g.onsite
        n_out = self.irreps_block.num_irreps
        for sl in self._chunks(E):
            x = edge_inputs(sl)
            norms = torch.log1p(instance_norms(x, self.in_index, self.irreps_in.num_irreps))
            zi, zj = self.embed(g.z[g.edge_src[sl]]), self.embed(g.z[g.edge_dst[sl]])
            s_chunk = self.edge_mlp(torch.cat([bessel(r[sl], cfg.num_rbf, cfg.r_max), zi, zj, norms,
                                               on_all[sl].to(x.dtype)[:, None]], dim=1))
            if density:
                xd = dm_inputs(sl)
                s_chunk = s_chunk + self.dm_scalars(torch.log1p(instance_norms(xd, self.out_index, n_out)))
            s_parts.append(s_chunk)
            # the environment term is scaled by the size of the edge's own H(0)/S block (an invariant):
            # corrections of far, tiny blocks stay tiny instead of picking up noise
            size_parts.append(torch.linalg.norm(x, dim=1, keepdim=True))
            on = torch.nonzero(on_all[sl], as_tuple=False).squeeze(1)
            if x_node is None:
                x_node = torch.zeros(n_atoms, x.shape[1], dtype=x.dtype, device=x.device)
            x_node = x_node.index_copy(0, g.edge_src[sl][on], x[on]) if len(on) else x_node
            if density:
                if xd_node is None:
                    xd_node = torch.zeros(n_atoms, xd.shape[1], dtype=xd.dtype, device=xd.device)
                xd_node = xd_node.index_copy(0, g.edge_src[sl][on], xd[on]) if len(on) else xd_node
        s_e = torch.cat(s_parts)
        size = torch.cat(size_parts)
        # nodes from their on-site blocks
        h = self.node_in(torch.cat([x_node, self.embed(g.z)], dim=1))
        if density:
            h = h + self.dm_node(xd_node)
        # attention-weighted equivariant message passing (on-site edges excluded)
        off = ~g.onsite
        src, dst = g.edge_src[off], g.edge_dst[off]
        # Spherical harmonics of every edge's direction, computed once for all layers and heads.
        # On-site edges have no direction: they get the fixed vector (1, 1, 1), which keeps their rows
        # finite, and every use of sh_all takes the off-site rows (sh_off) or masks the on-site rows out.
        sh_all = o3.spherical_harmonics(self.irreps_sh, torch.where(g.onsite[:, None], torch.ones_like(g.edge_vec),
                                                                     g.edge_vec), normalize=True, normalization="component")
        sh_off = sh_all[off]
        env = envelope(r[off], cfg.r_max)[:, None]
        s_off = s_e[off]
        for tp, fused, cw, att, pre, gate in zip(self.convs, self.convs_fused, self.conv_w, self.attn, self.pre_gate,
                                                 self.gates):
            logit = att(torch.cat([s_off, self._scalars(h)[src], self._scalars(h)[dst]], dim=1)).squeeze(1)
            alpha = segment_softmax(logit, src, n_atoms)[:, None]
            agg = None
            for sl in self._chunks(len(src)):
                m = self._tensor_product(fused, tp, h[dst[sl]], sh_off[sl], cw(s_off[sl]))
                if agg is None:
                    agg = torch.zeros(n_atoms, m.shape[1], dtype=m.dtype, device=m.device)
                agg = agg.index_add(0, src[sl], alpha[sl] * env[sl] * m)
            if agg is None:
                agg = torch.zeros(n_atoms, self.irreps_hidden.dim, dtype=h.dtype, device=h.device)
            h = h + gate(pre(agg))
        # edge corrections, chunk by chunk, then symmetrised with the mirror edges
        inv = torch.cat([s_e, self._scalars(h)[g.edge_src], self._scalars(h)[g.edge_dst]], dim=1)
        atom_inv = torch.cat([self._scalars(h), self.embed(g.z)], dim=1)  # invariants of each atom
        v = self.potential(atom_inv) * cfg.target_scale  # [atoms, slots]
        spin_on = cfg.spin_head and g.spinor and g.h0_spin is not None

        def edge_term(sl: slice | torch.Tensor) -> torch.Tensor:
            """Block irreps of the edge messages h_j ⊗ Y(r̂_ij) of the edges in sl (0 on-site)."""
            z = self._tensor_product(self.edge_tp_fused, self.edge_tp, h[g.edge_dst[sl]], sh_all[sl],
                                     self.edge_tp_w(s_e[sl]))
            return self.edge_out(z * (~g.onsite[sl])[:, None].to(z.dtype))

        if cfg.bond_env:
            # the edges from each atom to its neighbours within r_env (the k of the three-body sums),
            # grouped by their source atom
            near = torch.nonzero(~g.onsite & (r < cfg.r_env), as_tuple=False).squeeze(1)
            near = near[torch.argsort(g.edge_src[near], stable=True)]
            n_near = torch.bincount(g.edge_src[near], minlength=n_atoms)
            first_near = torch.cumsum(n_near, 0) - n_near

        def env_term(sl: slice | torch.Tensor) -> torch.Tensor:
            """Block irreps of the bond-environment term of the edges in sl: m_e = Σ_k w(|r_ik|, |r_jk|,
            Z_k) Y(r̂_ik) over the neighbours k of i within r_env, coupled with Y(r̂_ij) (on-site edges:
            with its l = 0 part alone, as they have no direction)."""
            e = torch.arange(E, device=r.device)[sl]
            src = g.edge_src[e]
            cnt = n_near[src]
            rep = torch.repeat_interleave(torch.arange(len(e), device=r.device), cnt)
            start = torch.cumsum(cnt, 0) - cnt
            f = near[first_near[src][rep] + torch.arange(len(rep), device=r.device) - start[rep]]
            v_ik = g.edge_vec[f]
            r_ik = torch.linalg.norm(v_ik, dim=1)
            r_jk = torch.linalg.norm(v_ik - g.edge_vec[e][rep], dim=1)
            w = self.env_radial(torch.cat([bessel(r_ik, cfg.num_rbf, cfg.r_env),
                                           bessel(r_jk, cfg.num_rbf, cfg.r_env + cfg.r_max),
                                           self.embed(g.z[g.edge_dst[f]])], dim=1))
            w = w * envelope(r_ik, cfg.r_env)[:, None]
            y_k = o3.spherical_harmonics(self.irreps_env_sh, v_ik, normalize=True, normalization="component")
            c = cfg.env_channels
            parts = [(w[:, l * c:(l + 1) * c, None] * y_k[:, l * l:(l + 1) ** 2][:, None, :]).reshape(len(rep), -1)
                     for l in range(4)]
            m = torch.zeros(len(e), self.irreps_env.dim, dtype=w.dtype, device=w.device)
            m = m.index_add(0, rep, torch.cat(parts, dim=1))
            sh = torch.where(g.onsite[sl][:, None], sh_all[sl] * self.sh_l0.to(w.dtype), sh_all[sl])
            return self.env_out(self._tensor_product(self.env_tp_fused, self.env_tp, m, sh))

        def correction_irreps(sl: slice | torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
            """ΔH irreps (units of target_scale) of the edges in sl (edge inputs x when already at hand),
            before the trace feedback."""
            x = edge_inputs(sl) if x is None else x
            gates = 1.0 + self.channel_gate(inv[sl])
            lin = self.edge_lin(x) + self.dm_edge(dm_inputs(sl)) if density else self.edge_lin(x)
            y = lin * gates[:, self.out_index] + pair_term(sl) * size[sl]
            if cfg.edge_messages:
                y = y + edge_term(sl) * size[sl]
            if cfg.bond_env:
                y = y + env_term(sl) * size[sl]
            return self.out_lin(y)

        tau = None
        if cfg.trace_feedback:
            # shells each atom has (padding slots excluded from the invariants)
            on_idx = torch.nonzero(g.onsite, as_tuple=False).squeeze(1)
            has = torch.zeros(n_atoms, len(self.slot_first), dtype=h.dtype, device=h.device)
            has = has.index_copy(0, g.edge_src[on_idx], g.mask[on_idx][:, self.slot_first, self.slot_first].to(h.dtype))

            def traces(y: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
                """log(1 + ‖y_k‖) of every irrep instance k whose two shells exist on atoms i, j."""
                return torch.log1p(instance_norms(y, self.out_index, n_out)) * has[i][:, self.inst_row] * has[j][:, self.inst_col]

            # on-site invariants τ of every atom first (from the one chunk when all edges fit, else
            # from a pass over the few on-site edges)
            tau = torch.zeros(n_atoms, n_out, dtype=h.dtype, device=h.device)
            if single:
                cache["y"] = correction_irreps(slice(0, E))
            if len(on_idx):
                src_on = g.edge_src[on_idx]
                y_on = cache["y"][on_idx] if single else correction_irreps(on_idx)
                tau = tau.index_copy(0, src_on, traces(y_on, src_on, src_on))
            v = v + self.trace_potential(torch.cat([self._scalars(h), tau], dim=1)) * cfg.target_scale
        if cfg.long_range:
            if g.ewald is None:
                raise ValueError("a long-range model needs the graph's Ewald operator (build_graph(..., long_range=True))")
            q = self.charge(atom_inv).squeeze(1)  # e
            v = v + (g.ewald @ q)[:, None] * self.ewald_response[None, :]  # eV
        raw_parts, spin_parts = [], []
        for sl in self._chunks(E):
            x = edge_inputs(sl)  # once per chunk, for both heads
            y = cache["y"] if "y" in cache else correction_irreps(sl, x)
            if tau is not None:
                t = traces(y, g.edge_src[sl], g.edge_dst[sl])
                g2 = self.trace_gate(torch.cat([inv[sl], t, tau[g.edge_src[sl]], tau[g.edge_dst[sl]]], dim=1))
                y = y * (1.0 + g2)[:, self.out_index]
            y = y * cfg.target_scale
            blocks = self.block_map.transpose(y).reshape(-1, n, n)
            vi = v[g.edge_src[sl]][:, self.slot_of]  # [e, n]
            vj = v[g.edge_dst[sl]][:, self.slot_of]
            raw_parts.append(blocks + 0.5 * (vi[:, :, None] + vj[:, None, :]) * g.s[sl])
            if spin_on:
                xb = self.spin_map((g.h0_spin[sl] / cfg.h0_scale).reshape(-1, n * n * 3))
                yb = self.spin_lin(torch.cat([xb, x], dim=1))
                yb = yb * (1.0 + self.spin_gate(inv[sl]))[:, self.spin_index]
                yb = self.spin_out(yb) * cfg.target_scale
                spin_parts.append(self.spin_map.transpose(yb).reshape(-1, n, n, 3))
        raw = torch.cat(raw_parts)
        raw_parts.clear()
        if cfg.local_potential is not None:
            if g.vp is None and not g.potential_deferred:
                raise ValueError("a local-potential model needs the graph's potential integrals "
                                 "(build_graph(..., **graph_options(model.cfg)))")
            c = self.local_pot(atom_inv)  # [atoms, m] eV
            if g.potential_deferred:  # the caller integrates ΔV's matrix itself (core.potential_matrix)
                object.__setattr__(self, "deferred_potential", c.detach())  # an output, not state
                return self._finish(raw, spin_parts, g, spin_on)
            for sl in self._chunks(len(g.vp_edge)):
                raw = raw.index_add(0, g.vp_edge[sl], torch.einsum("pm,pmab->pab", c[g.vp_atom[sl]], g.vp[sl]))
        return self._finish(raw, spin_parts, g, spin_on)

    def _finish(self, raw: torch.Tensor, spin_parts: list[torch.Tensor], g: Graph,
                spin_on: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The spin-free blocks and the SOC part, each made hermitian with the mirror edges."""
        blocks = self._hermitian_part(raw, g.mirror, g.mask, 1.0)
        spin = None
        if spin_on:
            sb = torch.cat(spin_parts)
            spin_parts.clear()
            spin = self._hermitian_part(sb, g.mirror, g.mask[..., None], -1.0)
        return blocks, spin

    @staticmethod
    def _hermitian_part(x: torch.Tensor, mirror: torch.Tensor, mask: torch.Tensor, sign: float) -> torch.Tensor:
        """½ (x + sign · x[mirror]ᵀ) · mask: the blocks of edge (i, j, R) and of its mirror (j, i, −R)
        made each other's transposes (sign −1: the SOC part, whose blocks are antisymmetric under it).
        Without autograd it is done in place on one copy (the peak memory of big cells); same values."""
        if torch.is_grad_enabled():
            return 0.5 * (x + sign * x[mirror].transpose(1, 2)) * mask
        out = x[mirror].transpose(1, 2)
        if sign < 0:
            out.neg_()
        return out.add_(x).mul_(0.5).mul_(mask)
