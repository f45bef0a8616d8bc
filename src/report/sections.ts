import type { TopLevelSpec } from 'vega-lite';
import { Registry } from '../util/registry.js';
import { paretoFront, type Candidate } from '../control/select.js';
import { si } from '../util/format.js';
import { barChart, fixed, lineChart, percent, quantitative, round, type Row } from './charts.js';
import { blockSkips, classCompute, classRoutes, classSkips, expertTables, HISTOGRAM_BINS, maskCells, type DynamicSweepData } from './dynamic.js';
import { CHART_SIZE } from './vega.js';
import { RUN_FILES } from './sources.js';
import { compareSection } from './compare.js';
import type { Availability, Chart, ControllerEvalData, ReportSection, RunData, SectionContent, SweepData } from './types.js';

/** The report's chart sections, in page order; a new data source is one more entry. */
export const sections = new Registry<ReportSection>('report section');
/** Section names in page order (the registry lists names sorted). */
export const SECTION_ORDER: string[] = [];

/** Registers a section at the end of the page. */
export function registerSection(section: ReportSection): void {
  sections.register(section.name, section);
  SECTION_ORDER.push(section.name);
}

/** A run's legend label: its name, training schedule and gating (the ablation axes). */
export function runLabel(run: RunData): string {
  return `${run.name} (${run.schedule}, ${run.gating})`;
}

const ok: Availability = { ok: true };
const empty = (): SectionContent => ({ charts: [], tables: [], commands: [], notes: [] });
const sweepHint = (run: RunData) =>
  run.noFixedU
    ? `none for ${run.name}, which has no network at a fixed u`
    : typeof run.modelArgs.dynamic === 'string'
    ? `\`dynn report ${run.dir}\` without --no-sweep (it measures the backbone at fixed u; \`dynn sweep\` of a dynamic run sweeps its gates' threshold instead)`
    : `\`dynn report ${run.dir}\` without --no-sweep, or \`dynn sweep ${run.dir} --json > ${run.dir}/${RUN_FILES.sweep}\``;

function withSweep(runs: RunData[]): (RunData & { sweep: SweepData })[] {
  return runs.filter((r): r is RunData & { sweep: SweepData } => r.sweep !== null);
}

function needSweep(runs: RunData[]): Availability {
  if (withSweep(runs).length) return ok;
  return { ok: false, missing: `no run has a sweep (accuracy at fixed u): ${runs.map(sweepHint).join('; ')}` };
}

function sweepNotes(runs: RunData[], content: SectionContent): void {
  for (const r of runs) if (!r.sweep) content.notes.push(`${r.name}: no sweep (${r.sweepMissing ?? 'not measured'})${r.noFixedU ? '' : `; make one with ${sweepHint(r)}`}.`);
  for (const r of withSweep(runs)) {
    const src = r.sweep.source;
    const where = src.kind === 'file' ? `read from ${src.path}` : src.savedTo ? `measured by this report and saved to ${src.savedTo}` : 'measured by this report';
    content.notes.push(`${r.name}: sweep on ${r.sweep.testSamples ?? 'an unknown number of'} ${r.sweep.dataset} test samples, ${where}.`);
  }
}

const sortedKeys = (h: Record<string, number>) => Object.keys(h).sort((a, b) => Number(a) - Number(b));

registerSection({
  name: 'training',
  title: 'Training curves',
  description: 'Loss, accuracy and throughput per epoch, from the checkpoint history. Training accuracy is at the u sampled for each batch; test accuracy is after BatchNorm calibration at each evaluated u.',
  available: (runs) => (runs.some((r) => r.meta.history.length) ? ok : { ok: false, missing: 'no run has finished an epoch yet (the history is written with each checkpoint)' }),
  render(runs) {
    const content = empty();
    const loss: Row[] = [];
    const acc: Row[] = [];
    const speed: Row[] = [];
    for (const r of runs) {
      if (!r.meta.history.length) content.notes.push(`${r.name}: no epoch finished yet.`);
      for (const h of r.meta.history) {
        loss.push({ run: r.name, epoch: h.epoch, loss: round(h.loss) });
        speed.push({ run: r.name, epoch: h.epoch, samplesPerSec: round(h.samplesPerSec, 4) });
        acc.push({ series: `${r.name} · train (sampled u)`, epoch: h.epoch, accuracy: round(h.trainAccuracy) });
        for (const u of sortedKeys(h.testAccuracy)) acc.push({ series: `${r.name} · test u=${u}`, epoch: h.epoch, accuracy: round(h.testAccuracy[u]) });
      }
      content.commands.push(r.trainCommand);
    }
    const epoch = { field: 'epoch', title: 'epoch', as: 'int' as const };
    content.charts.push(
      { id: 'training-loss', title: 'Training loss', spec: lineChart('Training loss (mean over the epoch)', loss, epoch, { field: 'loss', title: 'loss' }, { field: 'run', title: 'run' }) },
      { id: 'training-accuracy', title: 'Accuracy', spec: lineChart('Accuracy per epoch', acc, epoch, { field: 'accuracy', title: 'accuracy', as: 'percent' }, { field: 'series', title: 'run · split' }) },
      { id: 'training-speed', title: 'Throughput', spec: lineChart('Training throughput', speed, epoch, { field: 'samplesPerSec', title: 'samples / s' }, { field: 'run', title: 'run' }) },
    );
    const us = [...new Set(runs.flatMap((r) => r.meta.history.flatMap((h) => Object.keys(h.testAccuracy))))].sort((a, b) => Number(a) - Number(b));
    content.tables.push({
      caption: 'Training history',
      head: ['run', 'epoch', 'loss', 'train acc', ...us.map((u) => `test u=${u}`), 'samples/s', 'ms/step', 'seconds', 'lr'],
      rows: runs.flatMap((r) =>
        r.meta.history.map((h) => [r.name, h.epoch, fixed(h.loss, 4), percent(h.trainAccuracy), ...us.map((u) => percent(h.testAccuracy[u] ?? NaN)), fixed(h.samplesPerSec, 0), fixed(h.msPerStep, 0), fixed(h.seconds, 1), h.lr.toExponential(2)]),
      ),
    });
    return content;
  },
});

registerSection({
  name: 'accuracy-u',
  title: 'Accuracy against utilization',
  description: 'Test accuracy of one network at each utilization u. A throttleable network degrades gracefully as u falls; a vanilla network (trained at u = 1 only) collapses. Runs trained with nested and independent gating compare the ablation.',
  available: needSweep,
  render(runs) {
    const content = empty();
    const data: Row[] = withSweep(runs).flatMap((r) => r.sweep.points.map((p) => ({ run: runLabel(r), u: round(p.u), accuracy: round(p.accuracy) })));
    content.charts.push({ id: 'accuracy-u', title: 'Accuracy vs u', spec: lineChart('Test accuracy vs utilization u', data, { field: 'u', title: 'utilization u', domain: [0, 1] }, { field: 'accuracy', title: 'test accuracy', as: 'percent' }, { field: 'run', title: 'run (schedule, gating)' }) });
    content.tables.push({
      caption: 'Accuracy at each u',
      head: ['run', 'schedule', 'gating', 'u', 'accuracy', 'FLOPs', 'FLOPs ratio', 'active params'],
      rows: withSweep(runs).flatMap((r) => r.sweep.points.map((p) => [r.name, r.schedule, r.gating, fixed(p.u), percent(p.accuracy), si(p.flops), fixed(p.flopsRatio), si(p.params)])),
    });
    content.commands.push(...withSweep(runs).map((r) => r.sweep.command));
    sweepNotes(runs, content);
    return content;
  },
});

/** Pareto-optimal points among candidates (cost = flops relative to a common reference). */
function front<T extends { accuracy: number }>(items: T[], cost: (t: T) => number, ref: number): T[] {
  const cands: (Candidate & { item: T })[] = items.map((item, i) => ({ name: String(i), kind: 'point', params: {}, accuracy: item.accuracy, flopsRatio: cost(item) / ref, item }));
  return (paretoFront(cands) as (Candidate & { item: T })[]).map((c) => c.item);
}

function controllerChart(run: RunData, c: ControllerEvalData, index: number): Chart {
  const curve: Row[] = c.fixed.map((f) => ({ kind: 'fixed u', flopsRatio: round(f.flopsRatio), accuracy: round(f.accuracy), label: `u=${fixed(f.u, 2)}` }));
  const rows: Row[] = [
    { kind: `controller: ${c.name}`, flopsRatio: round(c.meanFlopsRatio), accuracy: round(c.accuracy), label: c.name },
    { kind: 'oracle (reads labels)', flopsRatio: round(c.oracle.meanFlopsRatio), accuracy: round(c.oracle.accuracy), label: 'oracle' },
  ];
  const tooltip = [{ field: 'label' }, { field: 'flopsRatio', type: 'quantitative' }, { field: 'accuracy', type: 'quantitative', format: '.2%' }];
  const color = { field: 'kind', type: 'nominal', title: 'operating point', scale: { domain: ['fixed u', `controller: ${c.name}`, 'oracle (reads labels)'], range: ['#7f7f7f', '#1a5fb4', '#e66100'] } };
  const deployable = [...c.fixed, { accuracy: c.accuracy, flopsRatio: c.meanFlopsRatio }];
  const frontRows = front(deployable, (p) => p.flopsRatio, 1).map((p) => ({ flopsRatio: round(p.flopsRatio), accuracy: round(p.accuracy) }));
  const x = quantitative({ field: 'flopsRatio', title: 'mean FLOPs / FLOPs at u = 1' });
  const y = quantitative({ field: 'accuracy', title: 'accuracy', as: 'percent' });
  const spec = {
    title: `${run.name}: controller ${c.name} against fixed u and the oracle (${c.samples})`,
    ...CHART_SIZE,
    layer: [
      { data: { values: frontRows }, mark: { type: 'line', interpolate: 'step-after', strokeDash: [4, 3], color: '#555' }, encoding: { x, y } },
      { data: { values: curve }, mark: { type: 'line', point: true }, encoding: { x, y, color, tooltip } },
      { data: { values: rows }, mark: { type: 'point', filled: true, size: 120, shape: 'diamond' }, encoding: { x, y, color, tooltip } },
    ],
  } as TopLevelSpec;
  return { id: `controller-${index}`, title: `Controller ${c.name}`, spec };
}

registerSection({
  name: 'condconv-routing',
  title: 'Dynamic parameters: how samples mix the kernels',
  description:
    'A dynamic layer reweights either its features or its parameters: (x * W) (x) a = x * (W (x) a). Squeeze-and-excitation (vgg-se) is the left side, dynamic features; a conditional convolution (CondConv, dynamic convolution: vgg-condconv, resnet-condconv) the right side, dynamic parameters: each sample convolves with its own mixture of E expert kernels. Per conditional layer: the mean entropy of the mixing weights (normalised to sum 1; log E when every sample mixes the experts equally, 0 when each picks one) and the class-by-kernel table of mean mixing weights (how specialised the kernels become).',
  available: (runs) =>
    withSweep(runs).some((r) => r.sweep.routing)
      ? ok
      : { ok: false, missing: `no run has conditional convolutions with routing statistics (\`dynn sweep RUN --json > RUN/${RUN_FILES.sweep}\` of a vgg-condconv or resnet-condconv run)` },
  render(runs) {
    const content = empty();
    for (const r of withSweep(runs)) {
      const routing = r.sweep.routing;
      if (!routing) continue;
      const entropy: Row[] = routing.layers.map((l) => ({ layer: `${r.name} · ${l.layer}`, entropy: round(l.meanEntropy / (l.maxEntropy || 1)) }));
      content.charts.push({ id: `condconv-entropy-${r.name}`, title: `${r.name}: routing entropy`, spec: barChart(`${r.name}: mean routing entropy / log E per layer`, entropy, { field: 'layer', title: 'layer', sort: entropy.map((e) => String(e.layer)) }, { field: 'entropy', title: 'entropy / log E' }) });
      for (const l of routing.layers) {
        content.tables.push({
          caption: `${r.name} · ${l.layer}: mean mixing weight per class and kernel (entropy ${fixed(l.meanEntropy)} of ${fixed(l.maxEntropy)})`,
          head: ['class', ...l.meanWeights.map((_, j) => `kernel ${j}`)],
          rows: [...l.perClass.map((w, c) => [r.sweep.classNames?.[c] ?? String(c), ...w.map((v) => fixed(v))]), ['all', ...l.meanWeights.map((v) => fixed(v))]],
        });
      }
      content.commands.push(r.sweep.command);
    }
    return content;
  },
});

registerSection({
  name: 'accuracy-flops',
  title: 'Accuracy against FLOPs',
  description: 'Accuracy against mean FLOPs per sample: the fixed operating points of every run, early-exit thresholds where a run has exits, and the Pareto front (dashed) of those points; then each controller against its own fixed-u curve and the oracle on the same samples (the paper’s Fig. 8a).',
  available: (runs) =>
    withSweep(runs).length || runs.some((r) => r.controllers.length || r.exits)
      ? ok
      : { ok: false, missing: `no sweep, controller evaluation or exit sweep: ${runs.map(sweepHint).join('; ')}${runs.some((r) => r.dynamic) ? '; a dynamic run\'s accuracy against executed FLOPs is under "Per-sample compute of dynamic runs"' : ''}` },
  render(runs) {
    const content = empty();
    type Pt = { run: string; kind: string; flops: number; accuracy: number; label: string };
    const points: Pt[] = [];
    for (const r of withSweep(runs)) for (const p of r.sweep.points) points.push({ run: r.name, kind: 'fixed u', flops: p.flops, accuracy: p.accuracy, label: `u=${fixed(p.u, 3)}` });
    for (const r of runs) {
      if (!r.exits) continue;
      for (const p of r.exits.points) points.push({ run: r.name, kind: `exits (${r.exits.rule})`, flops: p.flops, accuracy: p.accuracy, label: `threshold ${p.threshold}` });
      content.commands.push(r.exits.command);
    }
    if (points.length) {
      const ref = Math.max(...points.map((p) => p.flops));
      const fr = front(points, (p) => p.flops, ref);
      const x = quantitative({ field: 'flops', title: 'mean FLOPs per sample', as: 'log' });
      const y = quantitative({ field: 'accuracy', title: 'test accuracy', as: 'percent' });
      const spec = {
        title: 'Accuracy vs FLOPs: fixed operating points and the Pareto front',
        ...CHART_SIZE,
        layer: [
          { data: { values: fr.map((p) => ({ flops: round(p.flops), accuracy: round(p.accuracy) })) }, mark: { type: 'line', interpolate: 'step-after', strokeDash: [4, 3], color: '#555' }, encoding: { x, y } },
          {
            data: { values: points.map((p) => ({ ...p, flops: round(p.flops), accuracy: round(p.accuracy) })) },
            mark: { type: 'line', point: true },
            encoding: {
              x,
              y,
              color: { field: 'run', type: 'nominal', title: 'run' },
              shape: { field: 'kind', type: 'nominal', title: 'operating points' },
              detail: { field: 'kind', type: 'nominal' },
              order: { field: 'flops', type: 'quantitative' },
              tooltip: [{ field: 'run' }, { field: 'label' }, { field: 'flops', type: 'quantitative', title: 'FLOPs', format: '~s' }, { field: 'accuracy', type: 'quantitative', format: '.2%' }],
            },
          },
        ],
      } as TopLevelSpec;
      content.charts.push({ id: 'accuracy-flops', title: 'Accuracy vs FLOPs', spec });
      const onFront = new Set(fr);
      content.tables.push({
        caption: 'Operating points (test set); * marks the Pareto front',
        head: ['run', 'kind', 'setting', 'FLOPs', 'accuracy', 'front'],
        rows: [...points].sort((a, b) => a.flops - b.flops).map((p) => [p.run, p.kind, p.label, si(p.flops), percent(p.accuracy), onFront.has(p) ? '*' : '']),
      });
      content.commands.push(...withSweep(runs).map((r) => r.sweep.command));
    }
    let index = 0;
    for (const r of runs) {
      for (const c of r.controllers) {
        content.charts.push(controllerChart(r, c, index++));
        content.tables.push({
          caption: `${r.name}: controller ${c.name} (${c.samples})`,
          head: ['operating point', 'accuracy', 'mean u', 'mean FLOPs ratio'],
          rows: [
            [`controller ${c.name}`, percent(c.accuracy), fixed(c.meanU), fixed(c.meanFlopsRatio)],
            ['oracle', percent(c.oracle.accuracy), fixed(c.oracle.meanU), fixed(c.oracle.meanFlopsRatio)],
            ...c.fixed.map((f) => [`fixed u=${fixed(f.u, 3)}`, percent(f.accuracy), fixed(f.u), fixed(f.flopsRatio)]),
          ],
        });
        content.commands.push(c.command);
      }
    }
    if (!runs.some((r) => r.controllers.length)) {
      content.notes.push(
        `No controller evaluation yet: save one with \`dynn eval RUN --controller cascade --json > RUN/${RUN_FILES.evalPrefix}cascade.json\` (any registered controller, or a \`dynn controller train\` checkpoint, whose validation result is read from beside the run).`,
      );
    }
    if (!runs.some((r) => r.exits)) content.notes.push(`No early-exit sweep (models with exits only): \`dynn sweep RUN --thresholds 0.05,0.1,0.2,0.4 --json > RUN/${RUN_FILES.exitSweep}\`.`);
    sweepNotes(runs, content);
    return content;
  },
});

registerSection({
  name: 'latency-u',
  title: 'Measured latency against utilization',
  description: 'Measured latency relative to u = 1 beside the FLOPs-proportional ideal (dashed): where the lines part, the runtime does not turn saved FLOPs into saved time (small ops, fixed overheads, channel padding).',
  available(runs) {
    if (runs.some((r) => r.onnxLatency)) return ok;
    if (withSweep(runs).some((r) => r.sweep.points.some((p) => Number.isFinite(p.latencyMs.batch1)))) return ok;
    return { ok: false, missing: 'no latency measured: the sweeps were run with --no-latency (or are missing) and no ONNX latency table is beside a run (`dynn profile RUN/model.onnx`)' };
  },
  render(runs) {
    const content = empty();
    for (const r of runs) {
      const data: Row[] = [];
      const pts = r.sweep?.points.filter((p) => Number.isFinite(p.latencyMs.batch1)) ?? [];
      if (pts.length) {
        const top = pts[pts.length - 1];
        for (const p of pts) {
          data.push({ u: round(p.u), series: 'FLOPs (ideal)', ratio: round(p.flopsRatio / top.flopsRatio), dash: 'ideal' });
          data.push({ u: round(p.u), series: 'TF.js batch 1', ratio: round(p.latencyMs.batch1 / top.latencyMs.batch1), dash: 'measured' });
          data.push({ u: round(p.u), series: 'TF.js batch 128', ratio: round(p.latencyMs.batch128 / top.latencyMs.batch128), dash: 'measured' });
        }
        content.tables.push({
          caption: `${r.name}: TF.js latency (median ms; ratio to u = ${fixed(top.u, 3)})`,
          head: ['u', 'FLOPs ratio', 'ms @1', 'ratio @1', 'ms @128', 'ratio @128'],
          rows: pts.map((p) => [fixed(p.u), fixed(p.flopsRatio / top.flopsRatio), fixed(p.latencyMs.batch1), fixed(p.latencyMs.batch1 / top.latencyMs.batch1), fixed(p.latencyMs.batch128), fixed(p.latencyMs.batch128 / top.latencyMs.batch128)]),
        });
        content.commands.push(r.sweep!.command);
      } else if (r.sweep) content.notes.push(`${r.name}: its sweep has no latency (run with --no-latency).`);
      else content.notes.push(`${r.name}: no sweep, so no TF.js latency.`);
      const ort = r.onnxLatency;
      if (ort) {
        const top = ort.levels[ort.levels.length - 1];
        for (const l of ort.levels) {
          if (!pts.length) data.push({ u: round(l.u), series: 'FLOPs (ideal)', ratio: round(l.flopsRatio / top.flopsRatio), dash: 'ideal' });
          for (const b of ort.batches) data.push({ u: round(l.u), series: `ONNX Runtime batch ${b}`, ratio: round(l.latencyMs[String(b)] / top.latencyMs[String(b)]), dash: 'measured' });
        }
        content.tables.push({
          caption: `${r.name}: ONNX Runtime latency (${ort.threads} threads; median ms; ratio to the top level)`,
          head: ['u', 'FLOPs ratio', ...ort.batches.flatMap((b) => [`ms @${b}`, `ratio @${b}`])],
          rows: ort.levels.map((l) => [fixed(l.u), fixed(l.flopsRatio), ...ort.batches.flatMap((b) => [fixed(l.latencyMs[String(b)]), fixed(l.latencyMs[String(b)] / top.latencyMs[String(b)])])]),
        });
        content.commands.push(ort.command);
      } else if (r.modelArgs.dynamic === undefined) content.notes.push(`${r.name}: no ONNX Runtime latency: \`dynn export ${r.dir} --onnx ${r.dir}/${RUN_FILES.onnx}\` then \`dynn profile ${r.dir}/${RUN_FILES.onnx}\`.`);
      if (data.length) {
        content.charts.push({
          id: `latency-${r.name}`,
          title: `${r.name}: latency`,
          spec: lineChart(`${r.name}: latency relative to u = 1, against the FLOPs ideal`, data, { field: 'u', title: 'utilization u', domain: [0, 1] }, { field: 'ratio', title: 'latency / latency at u = 1' }, { field: 'series', title: 'series' }, { field: 'dash', title: 'line', scale: { domain: ['measured', 'ideal'], range: [[1, 0], [5, 3]] } }),
        });
      }
    }
    return content;
  },
});

registerSection({
  name: 'u-distribution',
  title: 'Utilization chosen by controllers',
  description: 'How often a controller picks each u, with its mean u and the oracle’s (the lowest u at which the network is right) as rules (the paper’s Fig. 8b). A good controller spends high u only on hard inputs.',
  available: (runs) =>
    runs.some((r) => r.controllers.length)
      ? ok
      : { ok: false, missing: `no controller evaluation beside any run: \`dynn eval RUN --controller cascade --json > RUN/${RUN_FILES.evalPrefix}cascade.json\`, or a \`dynn controller train RUN --out DIR\` checkpoint (its validation result)` },
  render(runs) {
    const content = empty();
    let index = 0;
    for (const r of runs) {
      for (const c of r.controllers) {
        const total = Object.values(c.uHistogram).reduce((a, b) => a + b, 0);
        const oracleHist = c.oracle.uHistogram;
        // Side by side when both are drawn: the x axis is u itself, so the bars are shifted by hand.
        const shift = oracleHist ? 0.012 : 0;
        const bars: Row[] = sortedKeys(c.uHistogram).map((u) => ({ u: Number(u), x: Number(u) - shift, share: round(c.uHistogram[u] / total), who: `controller ${c.name}` }));
        if (oracleHist) {
          const n = Object.values(oracleHist).reduce((a, b) => a + b, 0);
          for (const u of sortedKeys(oracleHist)) bars.push({ u: Number(u), x: Number(u) + shift, share: round(oracleHist[u] / n), who: 'oracle' });
        } else content.notes.push(`${r.name} / ${c.name}: the oracle’s u distribution is not recorded in the evaluation (only its mean u), so only its mean is drawn.`);
        const rules: Row[] = [
          { u: round(c.meanU), who: `controller ${c.name}`, what: 'mean u' },
          { u: round(c.oracle.meanU), who: 'oracle', what: 'mean u' },
        ];
        const x = { field: 'u', type: 'quantitative', title: 'utilization u', scale: { domain: [0, 1.05] } };
        const color = { field: 'who', type: 'nominal', title: '' };
        const spec = {
          title: `${r.name}: u chosen by ${c.name} (${c.samples}); dashed: mean u`,
          ...CHART_SIZE,
          layer: [
            { data: { values: bars }, mark: { type: 'bar', size: 10, opacity: 0.8 }, encoding: { x: { ...x, field: 'x' }, y: { field: 'share', type: 'quantitative', title: 'share of samples', axis: { format: '.0%' } }, color, tooltip: [{ field: 'who' }, { field: 'u' }, { field: 'share', format: '.1%' }] } },
            { data: { values: rules }, mark: { type: 'rule', strokeDash: [5, 3], strokeWidth: 2 }, encoding: { x, color } },
          ],
        } as TopLevelSpec;
        content.charts.push({ id: `u-distribution-${index++}`, title: `u chosen by ${c.name}`, spec });
        content.tables.push({
          caption: `${r.name}: u chosen by ${c.name}`,
          head: ['u', 'samples', 'share', ...(oracleHist ? ['oracle samples'] : [])],
          rows: sortedKeys({ ...c.uHistogram, ...(oracleHist ?? {}) }).map((u) => [u, c.uHistogram[u] ?? 0, percent((c.uHistogram[u] ?? 0) / total), ...(oracleHist ? [oracleHist[u] ?? 0] : [])]),
        });
        content.commands.push(c.command);
      }
    }
    return content;
  },
});

registerSection({
  name: 'per-class',
  title: 'Per-class accuracy against utilization',
  description: 'Test accuracy of each class at each u (the paper’s Fig. 7): some classes stay easy at low u, others need the full network.',
  available: needSweep,
  render(runs) {
    const content = empty();
    for (const r of withSweep(runs)) {
      const k = r.sweep.points[0].perClassAccuracy.length;
      const names = r.sweep.classNames?.length === k ? r.sweep.classNames : Array.from({ length: k }, (_, i) => `class ${i}`);
      const data: Row[] = r.sweep.points.flatMap((p) => p.perClassAccuracy.map((a, c) => ({ class: names[c], u: round(p.u), accuracy: round(a) })));
      content.charts.push({
        id: `per-class-${r.name}`,
        title: `${r.name}: per-class accuracy`,
        spec: lineChart(`${r.name}: accuracy per class vs u`, data, { field: 'u', title: 'utilization u', domain: [0, 1] }, { field: 'accuracy', title: 'class accuracy', as: 'percent' }, { field: 'class', title: 'class', sort: names }),
      });
      content.tables.push({
        caption: `${r.name}: per-class accuracy`,
        head: ['class', ...r.sweep.points.map((p) => `u=${fixed(p.u, 3)}`)],
        rows: names.map((n, c) => [n, ...r.sweep.points.map((p) => percent(p.perClassAccuracy[c]))]),
      });
      content.commands.push(r.sweep.command);
    }
    if (withSweep(runs).some((r) => !r.sweep.classNames)) content.notes.push('Class names were not recorded with a sweep and its data set could not be opened here: classes are numbered.');
    sweepNotes(runs, content);
    return content;
  },
});

function withDynamic(runs: RunData[]): (RunData & { dynamic: DynamicSweepData })[] {
  return runs.filter((r): r is RunData & { dynamic: DynamicSweepData } => r.dynamic !== null);
}

registerSection({
  name: 'dynamic',
  title: 'Per-sample compute of dynamic runs',
  description:
    'For runs whose gates decide per input (`--dynamic`), from their threshold sweep: accuracy against mean executed FLOPs at each inference threshold beside the backbone at fixed u (FLOPs over the backbone with nothing skipped, gates counted where they run); then, at the trained threshold, how executed FLOPs spread over samples, how often each gated block is skipped, and which classes get more compute.',
  available: (runs) =>
    withDynamic(runs).length
      ? ok
      : { ok: false, missing: runs.some((r) => r.dynamicMissing) ? runs.filter((r) => r.dynamicMissing).map((r) => `${r.name}: ${r.dynamicMissing}`).join('; ') : 'no run is dynamic (`dynn train --dynamic NAME`)' },
  render(runs) {
    const content = empty();
    for (const r of runs) if (r.dynamicMissing) content.notes.push(`${r.name}: ${r.dynamicMissing}`);
    const curve: Row[] = [];
    for (const r of withDynamic(runs)) {
      const d = r.dynamic;
      for (const p of d.points) curve.push({ series: `${r.name} · gates`, flopsRatio: round(p.flopsRatio), accuracy: round(p.accuracy), label: `threshold ${p.threshold}${p === d.trained ? ' (trained)' : ''}` });
      curve.push({ series: `${r.name} · backbone, no gate`, flopsRatio: 1, accuracy: round(d.full.accuracy), label: 'every channel' });
      // The u-sweep's FLOPs count the gates at every u, but the backbone runs none: taken out here.
      const share = d.trained.gateShare;
      for (const p of r.sweep?.points ?? []) curve.push({ series: `${r.name} · backbone at fixed u`, flopsRatio: round(p.flopsRatio * (1 + share) - share), accuracy: round(p.accuracy), label: `u=${fixed(p.u, 3)}` });
      if (!r.sweep) content.notes.push(`${r.name}: the backbone's u-curve is not drawn (${r.sweepMissing ?? 'no sweep over u'}).`);
      content.tables.push({
        caption: `${r.name}: ${d.mechanism} gates on ${d.testSamples} ${d.dataset} test samples (backbone with no gate: ${percent(d.full.accuracy)}, ${fixed(d.full.latencyMs.batch64, 2)} ms @64; masked at the first threshold: ${fixed(d.masked.latencyMs.batch64, 2)} ms @64)`,
        head: ['threshold', 'accuracy', 'FLOPs ratio', 'least', 'most', 'gates’ share', 'ms @1', 'ms @64'],
        rows: d.points.map((p) => [`${p.threshold}${p === d.trained ? ' (trained)' : ''}`, percent(p.accuracy), fixed(p.flopsRatio), fixed(p.flopsMin), fixed(p.flopsMax), fixed(p.gateShare), fixed(p.latencyMs.batch1, 2), fixed(p.latencyMs.batch64, 2)]),
      });
      content.commands.push(d.command);
    }
    const x = quantitative({ field: 'flopsRatio', title: 'mean executed FLOPs / backbone FLOPs' });
    const y = quantitative({ field: 'accuracy', title: 'test accuracy', as: 'percent' });
    const spec = {
      title: 'Accuracy vs executed FLOPs: gates at each threshold, the backbone at fixed u',
      ...CHART_SIZE,
      data: { values: curve },
      mark: { type: 'line', point: true },
      encoding: {
        x,
        y,
        color: { field: 'series', type: 'nominal', title: 'operating points' },
        order: { field: 'flopsRatio', type: 'quantitative' },
        tooltip: [{ field: 'series' }, { field: 'label' }, { field: 'flopsRatio', type: 'quantitative', format: '.3f' }, { field: 'accuracy', type: 'quantitative', format: '.2%' }],
      },
    } as TopLevelSpec;
    content.charts.push({ id: 'dynamic-accuracy-flops', title: 'Accuracy vs executed FLOPs', spec });
    for (const r of withDynamic(runs)) {
      const d = r.dynamic;
      const at = `threshold ${d.trained.threshold}`;
      const hist: Row[] = d.trained.histogram.map((n, i) => ({ bin: HISTOGRAM_BINS[i], share: round(n / d.testSamples), samples: n }));
      const skips = blockSkips(d.trained);
      const classes = classCompute(d, d.trained);
      content.charts.push(
        { id: `dynamic-histogram-${r.name}`, title: `${r.name}: FLOPs per sample`, spec: barChart(`${r.name}: executed FLOPs ratio per sample (${at})`, hist, { field: 'bin', title: 'FLOPs ratio', sort: HISTOGRAM_BINS }, { field: 'share', title: 'share of samples', as: 'percent' }, [{ field: 'samples', type: 'quantitative' }]) },
        // A mixture of experts skips nothing: no skip rates to draw.
        ...(skips.length ? [{ id: `dynamic-skips-${r.name}`, title: `${r.name}: skip rate per block`, spec: barChart(`${r.name}: share of groups skipped per gated block (${at})`, skips.map((s) => ({ block: s.block, skipped: round(s.skipped) })), { field: 'block', title: 'gated block', sort: skips.map((s) => s.block) }, { field: 'skipped', title: 'groups skipped', as: 'percent', domain: [0, 1] }) }] : []),
        { id: `dynamic-class-flops-${r.name}`, title: `${r.name}: FLOPs per class`, spec: barChart(`${r.name}: mean executed FLOPs ratio per class (${at})`, classes.map((c) => ({ class: c.name, flopsRatio: round(c.flopsRatio), accuracy: round(c.accuracy) })), { field: 'class', title: 'class', sort: d.classNames }, { field: 'flopsRatio', title: 'mean FLOPs ratio' }, [{ field: 'accuracy', type: 'quantitative', format: '.2%' }]) },
      );
      if (classes.some((c) => Number.isFinite(c.accuracy))) {
        content.charts.push({ id: `dynamic-class-accuracy-${r.name}`, title: `${r.name}: accuracy per class`, spec: barChart(`${r.name}: accuracy per class (${at})`, classes.map((c) => ({ class: c.name, accuracy: round(c.accuracy) })), { field: 'class', title: 'class', sort: d.classNames }, { field: 'accuracy', title: 'class accuracy', as: 'percent', domain: [0, 1] }) });
      } else content.notes.push(`${r.name}: its threshold sweep predates per-class accuracy; remake it to draw it: \`${d.command}\`.`);
      // Which blocks each class skips: the routes per class, as a class x block grid.
      const perClass = classSkips(d, d.trained);
      if (perClass && perClass.blocks.length) {
        const cells: Row[] = perClass.classes.flatMap((c) => perClass.blocks.map((b, j) => ({ class: c.name, block: b, skipped: round(c.skipped[j]) })));
        const spec = {
          title: `${r.name}: groups skipped per class and block (${at})`,
          ...CHART_SIZE,
          data: { values: cells },
          mark: 'rect',
          encoding: {
            x: { field: 'block', type: 'nominal', title: 'gated block', sort: perClass.blocks },
            y: { field: 'class', type: 'nominal', title: 'class', sort: d.classNames },
            color: { field: 'skipped', type: 'quantitative', title: 'skipped', scale: { domain: [0, 1] }, legend: { format: '.0%' } },
            tooltip: [{ field: 'class' }, { field: 'block' }, { field: 'skipped', type: 'quantitative', format: '.1%' }],
          },
        } as TopLevelSpec;
        content.charts.push({ id: `dynamic-class-skips-${r.name}`, title: `${r.name}: skips per class`, spec });
        content.tables.push({ caption: `${r.name}: groups skipped per class and block (${at})`, head: ['class', ...perClass.blocks], rows: perClass.classes.map((c) => [c.name, ...c.skipped.map((s) => percent(s))]) });
      } else if (!perClass) content.notes.push(`${r.name}: its threshold sweep predates per-class skip rates; remake it to draw which blocks each class skips: \`${d.command}\`.`);
      // Spatial gates: each test image with the positions every gated block computed over it (a picture per sample).
      const cells = maskCells(d);
      if (cells.length) {
        const m = d.masks!;
        const axis = { axis: null, scale: { paddingInner: 0, paddingOuter: 0 } };
        content.charts.push({
          id: `dynamic-spatial-masks-${r.name}`,
          title: `${r.name}: spatial masks`,
          spec: {
            title: `${r.name}: positions computed (orange) by each gated block over the first ${m.samples.length} test images (threshold ${m.threshold})`,
            data: { values: cells },
            facet: { row: { field: 'sample', type: 'nominal', title: 'test image', sort: [...new Set(cells.map((c) => c.sample))], header: { labelAngle: 0, labelAlign: 'left' } }, column: { field: 'block', type: 'nominal', title: 'gated block', sort: m.blocks.map((b) => b.name) } },
            spec: {
              width: 84,
              height: 84,
              layer: [
                { mark: 'rect', encoding: { x: { field: 'x', type: 'ordinal', ...axis }, y: { field: 'y', type: 'ordinal', ...axis }, color: { field: 'intensity', type: 'quantitative', scale: { domain: [0, 255], range: ['#000000', '#ffffff'] }, legend: null } } },
                { transform: [{ filter: 'datum.computed == 1' }], mark: { type: 'rect', color: '#f58518', opacity: 0.55 }, encoding: { x: { field: 'x', type: 'ordinal', ...axis }, y: { field: 'y', type: 'ordinal', ...axis } } },
              ],
            },
            resolve: { scale: { x: 'independent', y: 'independent' } },
          } as TopLevelSpec,
        });
      }
      content.tables.push(
        { caption: `${r.name}: samples per executed FLOPs ratio (${at})`, head: ['FLOPs ratio', 'samples', 'share'], rows: hist.map((h) => [String(h.bin), Number(h.samples), percent(Number(h.share))]) },
        ...(skips.length ? [{ caption: `${r.name}: groups skipped per gated block`, head: ['block', ...d.points.map((p) => `threshold ${p.threshold}`)], rows: skips.map((s) => [s.block, ...d.points.map((p) => percent(p.skipRates[s.block] ?? NaN))]) }] : []),
        { caption: `${r.name}: compute and accuracy per class (${at})`, head: ['class', 'mean FLOPs ratio', 'accuracy'], rows: classes.map((c) => [c.name, fixed(c.flopsRatio), percent(c.accuracy)]) },
      );
      // A mixture's choices are experts, not routes ordered by cost: its own views instead.
      const mixtures = expertTables(d, d.trained);
      for (const m of mixtures) {
        const experts = m.load.map((_, e) => `e${e}`);
        content.charts.push({
          id: `dynamic-expert-load-${r.name}-${m.block}`,
          title: `${r.name}: expert load of ${m.block}`,
          spec: barChart(`${r.name}: share of the assignments each expert of ${m.block} ran (CV ${fixed(m.cv)}, overflow ${percent(m.overflowRate)})`, m.load.map((l, e) => ({ expert: experts[e], share: round(l) })), { field: 'expert', title: 'expert', sort: experts }, { field: 'share', title: 'share of the assignments', as: 'percent', domain: [0, 1] }),
        });
        const cells: Row[] = m.classes.flatMap((c) => c.shares.map((v, e) => ({ class: c.name, expert: experts[e], share: round(v) })));
        const heat = {
          title: `${r.name}: experts each class ran at ${m.block}`,
          ...CHART_SIZE,
          data: { values: cells },
          mark: 'rect',
          encoding: {
            x: { field: 'expert', type: 'nominal', title: 'expert', sort: experts },
            y: { field: 'class', type: 'nominal', title: 'class', sort: d.classNames },
            color: { field: 'share', type: 'quantitative', title: 'share of the class', scale: { domain: [0, 1] }, legend: { format: '.0%' } },
            tooltip: [{ field: 'class' }, { field: 'expert' }, { field: 'share', type: 'quantitative', format: '.1%' }],
          },
        } as TopLevelSpec;
        content.charts.push({ id: `dynamic-class-experts-${r.name}-${m.block}`, title: `${r.name}: experts per class at ${m.block}`, spec: heat });
        content.tables.push(
          { caption: `${r.name}: expert load of ${m.block} (share of the assignments; CV ${fixed(m.cv)}, most used ${percent(m.maxShare)}, overflow ${percent(m.overflowRate)})`, head: experts, rows: [m.load.map((l) => percent(l))] },
          { caption: `${r.name}: experts each class ran at ${m.block} (share of the class's assignments)`, head: ['class', ...experts], rows: m.classes.map((c) => [c.name, ...c.shares.map((v) => percent(v))]) },
        );
      }
      for (const g of mixtures.length ? [] : classRoutes(d, d.trained)) {
        const routes = Array.from({ length: g.routes }, (_, k) => `route ${k}`);
        const rows: Row[] = g.classes.flatMap((c) => c.shares.map((v, k) => ({ class: c.name, route: routes[k], share: round(v) })));
        // Stacked: each class's bar split by the route its samples took.
        const bar = barChart(`${r.name}: share of each class on each route of ${g.gate}, cheapest first (${at})`, rows, { field: 'class', title: 'class', sort: d.classNames }, { field: 'share', title: 'share of the class', as: 'percent', domain: [0, 1] }, [{ field: 'route', type: 'nominal' }]) as { encoding: Record<string, unknown> };
        content.charts.push({
          id: `dynamic-routes-${r.name}-${g.gate}`,
          title: `${r.name}: routes of ${g.gate} per class`,
          spec: { ...bar, encoding: { ...bar.encoding, color: { field: 'route', type: 'nominal', title: 'route (cheapest first)', sort: routes } } } as TopLevelSpec,
        });
        content.tables.push({ caption: `${r.name}: which route each class took at ${g.gate} (${at}; route 0 the cheapest)`, head: ['class', ...routes], rows: g.classes.map((c) => [c.name, ...c.shares.map((v) => percent(v))]) });
      }
    }
    return content;
  },
});

registerSection({
  name: 'gates',
  title: 'Learned gate pattern per block',
  description: 'For learned gates g(u): the fraction of each block’s groups switched on at each u (the paper’s Fig. 11), the resulting complexity c against the target u, and, where evaluated, their accuracy against nested gating at the same cost.',
  available: (runs) =>
    runs.some((r) => r.gates.length || r.gatesEvals.length)
      ? ok
      : { ok: false, missing: 'no learned gates for any run: `dynn gates train RUN --out DIR` (a gates checkpoint inside or beside the run folder is found by its run reference)' },
  render(runs) {
    const content = empty();
    let index = 0;
    for (const r of runs) {
      for (const e of r.gatesEvals) {
        const rows: Row[] = e.points.flatMap((p) => [
          { series: `learned gates (${e.name})`, flopsRatio: round(p.flopsRatio), accuracy: round(p.accuracy) },
          { series: 'nested, same u', flopsRatio: round(p.nested.flopsRatio), accuracy: round(p.nested.accuracy) },
        ]);
        content.charts.push({
          id: `gates-eval-${index++}`,
          title: `${e.name}: gates against nested`,
          spec: lineChart(`${r.name}: learned gates vs nested gating (${e.dataset} ${e.split})`, rows, { field: 'flopsRatio', title: 'FLOPs / FLOPs at u = 1' }, { field: 'accuracy', title: 'accuracy', as: 'percent' }, { field: 'series', title: '' }),
        });
        content.tables.push({
          caption: `${r.name}: learned gates ${e.name} against nested gating (${e.dataset} ${e.split})`,
          head: ['u', 'c', 'FLOPs ratio', 'accuracy', 'nested FLOPs ratio', 'nested accuracy'],
          rows: e.points.map((p) => [fixed(p.u, 2), fixed(p.complexity), fixed(p.flopsRatio), percent(p.accuracy), fixed(p.nested.flopsRatio), percent(p.nested.accuracy)]),
        });
        content.commands.push(e.command);
      }
      for (const g of r.gates) {
        const blocks = Object.keys(g.pattern[0].blocks);
        const cells: Row[] = g.pattern.flatMap((p) => blocks.map((b) => ({ block: b, u: fixed(p.u, 2), active: round(p.blocks[b], 4) })));
        const heat = {
          title: `${r.name}: active fraction per block (${g.name}${g.method ? `, ${g.method}` : ''})`,
          width: Math.max(220, 56 * blocks.length),
          height: Math.max(120, 26 * g.pattern.length),
          data: { values: cells },
          encoding: {
            x: { field: 'block', type: 'nominal', sort: blocks, title: 'block', axis: { labelAngle: 0, grid: false } },
            y: { field: 'u', type: 'ordinal', sort: 'descending', title: 'target u', axis: { grid: false } },
          },
          layer: [
            {
              mark: 'rect',
              encoding: { color: { field: 'active', type: 'quantitative', title: 'active fraction', scale: { domain: [0, 1], scheme: 'blues' }, legend: { orient: 'right', direction: 'vertical', gradientLength: 110 } } },
            },
            { mark: { type: 'text', fontSize: 10 }, encoding: { text: { field: 'active', type: 'quantitative', format: '.2f' }, color: { condition: { test: 'datum.active > 0.6', value: 'white' }, value: '#222' } } },
          ],
        } as TopLevelSpec;
        const comp: Row[] = g.pattern.flatMap((p) => [
          { u: round(p.u), c: round(p.complexity), series: 'learned c(u)' },
          { u: round(p.u), c: round(p.u), series: 'c = u (target)' },
        ]);
        content.charts.push(
          { id: `gates-${index}`, title: `${g.name}: gate pattern`, spec: heat },
          { id: `gates-complexity-${index}`, title: `${g.name}: complexity`, spec: lineChart(`${r.name}: complexity of the learned gates vs target u`, comp, { field: 'u', title: 'target u' }, { field: 'c', title: 'complexity c' }, { field: 'series', title: '' }) },
        );
        index++;
        content.tables.push({
          caption: `${r.name}: gates ${g.dir}`,
          head: ['u', 'c', ...blocks],
          rows: g.pattern.map((p) => [fixed(p.u, 2), fixed(p.complexity), ...blocks.map((b) => fixed(p.blocks[b]))]),
        });
        content.commands.push(g.command);
      }
    }
    return content;
  },
});

registerSection({
  name: 'exits',
  title: 'Early exits',
  description: 'Where samples leave an early-exit network at each threshold, with accuracy and mean cost against the last exit alone.',
  available: (runs) =>
    runs.some((r) => r.exits) ? ok : { ok: false, missing: `no early-exit sweep beside any run (models with exits: vgg-exits, resnet-exits): \`dynn sweep RUN --thresholds 0.05,0.1,0.2,0.4 --json > RUN/${RUN_FILES.exitSweep}\`` },
  render(runs) {
    const content = empty();
    for (const r of runs) {
      const e = r.exits;
      if (!e) continue;
      const label = (t: number | number[]) => (Array.isArray(t) ? t.join(':') : String(t));
      const shares: Row[] = e.points.flatMap((p) => p.exitShares.map((s, i) => ({ threshold: label(p.threshold), exit: `exit ${i + 1}`, share: round(s) })));
      const spec = {
        title: `${r.name}: where samples exit (${e.rule} rule, u = ${e.u})`,
        ...CHART_SIZE,
        data: { values: shares },
        mark: 'bar',
        encoding: {
          x: { field: 'threshold', type: 'ordinal', title: 'threshold', sort: e.points.map((p) => label(p.threshold)), axis: { labelAngle: 0 } },
          y: { field: 'share', type: 'quantitative', title: 'share of samples', axis: { format: '.0%' } },
          color: { field: 'exit', type: 'nominal', title: 'exit' },
          order: { field: 'exit', type: 'ordinal', sort: 'ascending' },
        },
      } as TopLevelSpec;
      content.charts.push({ id: `exits-${r.name}`, title: `${r.name}: exits`, spec });
      content.tables.push({
        caption: `${r.name}: early-exit sweep on ${e.dataset} (last exit alone: ${percent(e.baseline.accuracy)}, ${si(e.baseline.flops)} FLOPs; each exit alone: ${e.exitAccuracy.map(percent).join(', ')})`,
        head: ['threshold', 'accuracy', 'mean FLOPs', 'FLOPs ratio', ...e.exitAccuracy.map((_, i) => `exit ${i + 1}`)],
        rows: e.points.map((p) => [label(p.threshold), percent(p.accuracy), si(p.flops), fixed(p.flopsRatio), ...p.exitShares.map(percent)]),
      });
      content.commands.push(e.command);
    }
    return content;
  },
});

registerSection(compareSection);
