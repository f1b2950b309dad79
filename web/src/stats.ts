// "What the merge did": plots of the per-tensor statistics the engine computes while the merge
// streams (crate/src/merge/stats.rs: `StatsRow`, definitions in its module docs), by layer and by
// tensor kind, updated live from the worker's progress messages, with a CSV download that is
// byte for byte the CSV `crucible merge RECIPE OUT --stats FILE.csv` writes (the engine makes it).
//
// References: task vectors (Ilharco et al. 2022, arXiv:2212.04089), sign conflicts (TIES, Yadav et
// al. 2023, arXiv:2306.01708); the charts are uPlot (https://github.com/leeoniya/uPlot).
//
// Why uPlot: ~50 KB minified, no dependencies, canvas line charts that take a new data array per
// update cheaply (live streaming), a hover cursor whose legend shows the values under it, and it
// writes labels with textContent (model names from a recipe never become HTML). Chart.js is
// about 4× larger for the same plots.
//
// Per-layer aggregation (tensors of one layer, optionally of one kind), exact where the row has
// what it takes:
//   ‖Δ_i‖ of a layer  = sqrt(Σ_t ‖Δ_i,t‖²)                (the layer's task-vector norm)
//   cos of a layer    = Σ_t cos_t‖Δ_1,t‖‖Δ_2,t‖ / (‖Δ_1‖‖Δ_2‖)   (first two task vectors)
//   fractions, angle  = element-weighted (numel) means over the layer's tensors
// Tensors outside the layer stack (embeddings, final norm, head) appear in the by-kind table.
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export type TensorKind = 'attention' | 'mlp' | 'norm' | 'embedding' | 'head' | 'other';

/** One output tensor's statistics (crate/src/merge/stats.rs `StatsRow`, serialized by serde). */
export type StatsRow = {
  tensor: string;
  layer: number | null;
  kind: TensorKind;
  method: string;
  numel: number;
  models: string[];
  delta_norms: number[];
  cos_first_two: number | null;
  cos_mean_pairwise: number | null;
  sign_conflict_frac: number | null;
  trimmed_frac: number | null;
  elected_away_frac: number | null;
  slerp_angle_rad: number | null;
  merged_delta_norm: number | null;
};

const KINDS: TensorKind[] = ['attention', 'mlp', 'norm', 'embedding', 'head', 'other'];
const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#ca8a04', '#db2777'];

type Agg = {
  tensors: number;
  numel: number;
  sumsq: Map<string, number>;
  cosNum: number;
  cosA: number;
  cosB: number;
  cosSeen: boolean;
  frac: Record<'conflict' | 'trimmed' | 'elected' | 'angle', { sum: number; w: number }>;
  mergedSq: number;
  mergedSeen: boolean;
};

function newAgg(): Agg {
  const z = () => ({ sum: 0, w: 0 });
  return { tensors: 0, numel: 0, sumsq: new Map(), cosNum: 0, cosA: 0, cosB: 0, cosSeen: false, frac: { conflict: z(), trimmed: z(), elected: z(), angle: z() }, mergedSq: 0, mergedSeen: false };
}

function addRow(a: Agg, r: StatsRow) {
  a.tensors += 1;
  a.numel += r.numel;
  r.models.forEach((m, i) => a.sumsq.set(m, (a.sumsq.get(m) ?? 0) + r.delta_norms[i] ** 2));
  if (r.models.length >= 2) {
    const [na, nb] = [r.delta_norms[0], r.delta_norms[1]];
    a.cosA += na * na;
    a.cosB += nb * nb;
    if (r.cos_first_two !== null) {
      a.cosNum += r.cos_first_two * na * nb;
      a.cosSeen = true;
    }
  }
  const f = (k: keyof Agg['frac'], v: number | null) => {
    if (v === null) return;
    a.frac[k].sum += v * r.numel;
    a.frac[k].w += r.numel;
  };
  f('conflict', r.sign_conflict_frac);
  f('trimmed', r.trimmed_frac);
  f('elected', r.elected_away_frac);
  f('angle', r.slerp_angle_rad);
  if (r.merged_delta_norm !== null) {
    a.mergedSq += r.merged_delta_norm ** 2;
    a.mergedSeen = true;
  }
}

const mean = (x: { sum: number; w: number }) => (x.w > 0 ? x.sum / x.w : null);
const cosOf = (a: Agg) => (a.cosSeen && a.cosA > 0 && a.cosB > 0 ? a.cosNum / Math.sqrt(a.cosA * a.cosB) : null);

function h<K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

const fmt = (v: number | null, digits = 4) => (v === null || !Number.isFinite(v) ? '—' : Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : v.toFixed(digits));

type ChartSpec = {
  id: string;
  title: string;
  /** fixed y range (fractions: 0..1); else auto */
  range?: [number, number];
  /** one series per returned label; values per layer */
  series: (layers: Agg[], models: string[]) => { label: string; values: (number | null)[] }[];
};

const CHARTS: ChartSpec[] = [
  {
    id: 'delta-norm',
    title: '‖Δ‖ per layer (task vector of each model against the base)',
    series: (L, models) => models.map((m) => ({ label: m, values: L.map((a) => (a.sumsq.has(m) ? Math.sqrt(a.sumsq.get(m)!) : null)) })),
  },
  {
    id: 'merged-norm',
    title: '‖merged − base‖ per layer',
    series: (L) => [{ label: 'merged − base', values: L.map((a) => (a.mergedSeen ? Math.sqrt(a.mergedSq) : null)) }],
  },
  { id: 'cosine', title: 'cosine between the first two task vectors per layer', series: (L) => [{ label: 'cos(Δ₁, Δ₂)', values: L.map(cosOf) }] },
  {
    id: 'fractions',
    title: 'sign conflicts, trimmed and elected-away fractions per layer',
    range: [0, 1],
    series: (L) => [
      { label: 'sign conflicts', values: L.map((a) => mean(a.frac.conflict)) },
      { label: 'trimmed / dropped', values: L.map((a) => mean(a.frac.trimmed)) },
      { label: 'elected away', values: L.map((a) => mean(a.frac.elected)) },
    ],
  },
  { id: 'angle', title: 'SLERP angle per layer (degrees)', series: (L) => [{ label: 'θ', values: L.map((a) => { const v = mean(a.frac.angle); return v === null ? null : (v * 180) / Math.PI; }) }] },
];

/** The "What the merge did" panel: `reset()` at the start of a merge, `add(rows)` with each
 * progress message, `finish(rows, csv)` with the report. */
export class StatsPanel {
  readonly root: HTMLElement;
  private rows: StatsRow[] = [];
  private csv: string | null = null;
  private charts = new Map<string, { plot: uPlot; labels: string }>();
  private chartsBox: HTMLElement;
  private table: HTMLElement;
  private kindSel: HTMLSelectElement;
  private csvBtn: HTMLButtonElement;
  private summary: HTMLElement;
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(root: HTMLElement) {
    this.root = root;
    root.classList.add('stats-panel');
    root.replaceChildren();
    root.append(h('h3', undefined, 'What the merge did'));
    root.append(
      h(
        'p',
        'hint',
        'Per layer: task vectors Δ = model − base, their cosine, the fraction of elements where task vectors disagree in sign, what the method trimmed or dropped and what its sign election left out, and the SLERP angle. Hover a chart for its values.',
      ),
    );
    const controls = h('div', 'row');
    const lab = h('label', undefined, 'Tensors');
    lab.htmlFor = 'stats-kind';
    this.kindSel = h('select');
    this.kindSel.id = 'stats-kind';
    for (const k of ['all', ...KINDS]) {
      const o = h('option', undefined, k === 'all' ? 'all kinds' : k);
      o.value = k;
      this.kindSel.append(o);
    }
    this.kindSel.onchange = () => this.redraw(true);
    this.csvBtn = h('button', undefined, 'Download statistics (CSV)');
    this.csvBtn.type = 'button';
    this.csvBtn.id = 'stats-csv-btn';
    this.csvBtn.disabled = true;
    this.csvBtn.onclick = () => this.downloadCsv();
    controls.append(lab, this.kindSel, this.csvBtn);
    this.summary = h('p', 'hint');
    this.summary.id = 'stats-summary';
    this.chartsBox = h('div', 'stats-charts');
    this.table = h('div', 'stats-table');
    root.append(controls, this.summary, this.chartsBox, h('h4', undefined, 'By tensor kind (all layers)'), this.table);
    root.hidden = true;
  }

  reset() {
    this.rows = [];
    this.csv = null;
    this.csvBtn.disabled = true;
    for (const c of this.charts.values()) c.plot.destroy();
    this.charts.clear();
    this.chartsBox.replaceChildren();
    this.table.replaceChildren();
    this.summary.textContent = '';
    this.root.hidden = true;
  }

  /** Rows finished since the last call (live, while the merge streams). */
  add(rows: StatsRow[] | undefined) {
    if (!rows?.length) return;
    this.rows.push(...rows);
    this.root.hidden = false;
    this.schedule();
  }

  /** The merge is done: the engine's CSV, and rows (every row, or those not sent yet: rows of
   * tensors already shown are not added twice — a tensor name appears once per merge). */
  finish(rows: StatsRow[] | undefined, csv: string | undefined) {
    const seen = new Set(this.rows.map((r) => r.tensor));
    for (const r of rows ?? []) if (!seen.has(r.tensor)) this.rows.push(r);
    this.csv = csv ?? null;
    this.csvBtn.disabled = this.csv === null;
    this.root.hidden = this.rows.length === 0;
    this.root.dataset.state = 'done';
    this.redraw(false);
  }

  /** The rows so far (tests read them). */
  getRows(): readonly StatsRow[] {
    return this.rows;
  }

  private schedule() {
    if (this.timer !== null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.redraw(false);
    }, 100);
  }

  private downloadCsv() {
    if (this.csv === null) return;
    const url = URL.createObjectURL(new Blob([this.csv], { type: 'text/csv' }));
    const a = document.createElement('a');
    a.href = url;
    a.download = 'merge-stats.csv';
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  private redraw(rebuild: boolean) {
    const kind = this.kindSel.value;
    const models: string[] = [];
    for (const r of this.rows) for (const m of r.models) if (!models.includes(m)) models.push(m);
    const layered = this.rows.filter((r) => r.layer !== null && (kind === 'all' || r.kind === kind));
    const nLayers = layered.reduce((n, r) => Math.max(n, (r.layer ?? 0) + 1), 0);
    const L: Agg[] = Array.from({ length: nLayers }, newAgg);
    for (const r of layered) addRow(L[r.layer!], r);
    const xs = Array.from({ length: nLayers }, (_, i) => i);
    const method = this.rows[0]?.method ?? '';
    this.summary.textContent = `${this.rows.length} tensors · method ${method} · ${nLayers} layers${kind === 'all' ? '' : ` · ${kind} tensors only`}`;
    this.root.dataset.rows = String(this.rows.length);

    for (const spec of CHARTS) {
      const series = spec.series(L, models).filter((s) => s.values.some((v) => v !== null));
      const existing = this.charts.get(spec.id);
      if (!series.length || !nLayers) {
        if (existing) {
          existing.plot.destroy();
          existing.plot.root.parentElement?.remove();
          this.charts.delete(spec.id);
        }
        continue;
      }
      const labels = series.map((s) => s.label).join('\u0000');
      const data: uPlot.AlignedData = [xs, ...series.map((s) => s.values)] as uPlot.AlignedData;
      if (existing && existing.labels === labels && !rebuild) {
        existing.plot.setData(data);
        continue;
      }
      if (existing) {
        existing.plot.destroy();
        existing.plot.root.parentElement?.remove();
      }
      const box = h('figure', 'stats-chart');
      box.dataset.chart = spec.id;
      this.chartsBox.append(box);
      const width = Math.max(320, Math.min(760, this.chartsBox.clientWidth || 640));
      const opts: uPlot.Options = {
        title: spec.title,
        width,
        height: 200,
        scales: { x: { time: false }, y: spec.range ? { range: spec.range } : {} },
        // layers are whole numbers: integer ticks only
        axes: [{ label: 'layer', incrs: [1, 2, 5, 10, 20, 50, 100] }, {}],
        cursor: { drag: { x: false, y: false } },
        series: [
          { label: 'layer', value: (_u, v) => (v === null || v === undefined ? '—' : String(v)) },
          ...series.map((s, i) => ({
            label: s.label,
            stroke: COLORS[i % COLORS.length],
            width: 1.5,
            points: { show: true, size: 5 },
            spanGaps: false,
            value: (_u: uPlot, v: number | null) => fmt(v),
          })),
        ],
      };
      this.charts.set(spec.id, { plot: new uPlot(opts, data, box), labels });
    }
    this.renderTable(models);
  }

  private renderTable(models: string[]) {
    const byKind = new Map<TensorKind, Agg>();
    for (const r of this.rows) {
      if (!byKind.has(r.kind)) byKind.set(r.kind, newAgg());
      addRow(byKind.get(r.kind)!, r);
    }
    const table = h('table');
    const head = h('tr');
    const cols = ['kind', 'tensors', 'parameters', ...models.map((m) => `‖Δ‖ ${m}`), 'cos(Δ₁,Δ₂)', 'sign conflicts', 'trimmed', 'elected away', 'SLERP θ (°)', '‖merged − base‖'];
    for (const c of cols) head.append(h('th', undefined, c));
    table.append(h('thead'));
    table.tHead!.append(head);
    const body = h('tbody');
    for (const k of KINDS) {
      const a = byKind.get(k);
      if (!a) continue;
      const tr = h('tr');
      tr.dataset.kind = k;
      const angle = mean(a.frac.angle);
      const cells = [
        k,
        String(a.tensors),
        a.numel.toLocaleString('en-US'),
        ...models.map((m) => (a.sumsq.has(m) ? fmt(Math.sqrt(a.sumsq.get(m)!)) : '—')),
        fmt(cosOf(a)),
        fmt(mean(a.frac.conflict)),
        fmt(mean(a.frac.trimmed)),
        fmt(mean(a.frac.elected)),
        fmt(angle === null ? null : (angle * 180) / Math.PI, 2),
        a.mergedSeen ? fmt(Math.sqrt(a.mergedSq)) : '—',
      ];
      for (const c of cells) tr.append(h('td', undefined, c));
      body.append(tr);
    }
    table.append(body);
    this.table.replaceChildren(table);
  }
}
