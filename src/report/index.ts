/**
 * Report: one self-contained HTML page of a run's curves (accuracy against u and FLOPs, measured latency,
 * per-class accuracy, controllers, gates, exits, training), drawn from its checkpoint and the files beside it
 * (see `RUN_FILES`). Each chart is a section in a registry with `available(runs)` and `render(runs)`.
 */
export { buildReport, writeReport, writePage, checkPageTarget, sectionLine, type BuildOptions, type Report, type ReportOptions, type SectionSummary } from './report.js';
export { gatherRun, gatherRuns, datasetClassNames, RUN_FILES, type GatherOptions } from './sources.js';
export { sections, registerSection, runLabel, SECTION_ORDER } from './sections.js';
export { renderSvg, CHART_CONFIG, CHART_SIZE } from './vega.js';
export { lineChart, barChart, quantitative, percent, fixed, round, type Row, type Channel } from './charts.js';
export { escapeHtml, pageHtml, prose, tableHtml, PAGE_CSS } from './html.js';
export { trainCommandLine, commandLine, shellQuote } from './commands.js';
export { readDynamicSweep, parseDynamicSweep, blockSkips, classCompute, HISTOGRAM_BINS, type DynamicSweepData, type DynamicPoint, type DynamicRunRef } from './dynamic.js';
export type * from './types.js';
