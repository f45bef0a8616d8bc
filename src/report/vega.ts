import * as vega from 'vega';
import { compile, type Config, type TopLevelSpec } from 'vega-lite';

/** The look shared by every chart: system fonts, quiet axes, a colour-blind-safe palette. */
export const CHART_CONFIG: Config = {
  font: 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif',
  view: { stroke: null },
  axis: { grid: true, gridColor: '#e6e6e6', domainColor: '#888', tickColor: '#888', labelColor: '#333', titleColor: '#333', titleFontWeight: 'normal', labelFontSize: 11, titleFontSize: 12 },
  legend: { labelFontSize: 11, titleFontSize: 11, titleFontWeight: 'normal', labelLimit: 320, orient: 'bottom', direction: 'vertical' },
  title: { fontSize: 13, fontWeight: 'normal', anchor: 'start', color: '#222' },
  range: { category: { scheme: 'tableau10' } },
  line: { strokeWidth: 2 },
  point: { size: 45, filled: true },
};

/** Default chart size (px). */
export const CHART_SIZE = { width: 460, height: 260 };

/**
 * Renders a Vega-Lite spec to an SVG string in Node with Vega's headless view: no browser, no network. The
 * SVG needs nothing to display, so the report opens from a file.
 */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  let view: vega.View | null = null;
  try {
    const compiled = compile({ ...spec, config: { ...CHART_CONFIG, ...(spec.config ?? {}) } } as TopLevelSpec).spec;
    view = new vega.View(vega.parse(compiled), { renderer: 'none', logLevel: vega.Error });
    return await view.toSVG();
  } finally {
    view?.finalize();
  }
}
