import type { TopLevelSpec } from 'vega-lite';
import { CHART_SIZE } from './vega.js';

/** One row of chart data. */
export type Row = Record<string, string | number | null>;

/** An encoding channel of a quantitative or nominal field, with its axis title. */
export interface Channel {
  field: string;
  title: string;
  /** 'percent' formats 0..1 as %, 'log' uses a log scale, 'int' shows whole ticks only. */
  as?: 'percent' | 'log' | 'int';
  /** Fixed domain. */
  domain?: [number, number];
}

/** A quantitative encoding from a channel description. */
export function quantitative(c: Channel): Record<string, unknown> {
  return {
    field: c.field,
    type: 'quantitative',
    title: c.title,
    scale: { ...(c.as === 'log' ? { type: 'log', nice: false, padding: 12 } : { zero: false }), ...(c.domain ? { domain: c.domain } : {}) },
    axis: { format: c.as === 'percent' ? '.0%' : c.as === 'int' ? 'd' : c.as === 'log' ? '~s' : ',~r', ...(c.as === 'int' ? { tickMinStep: 1 } : {}) },
  };
}

/** Lines with points: y against x, one line per value of `series`, optional dashes per `dash`. */
export function lineChart(title: string, data: Row[], x: Channel, y: Channel, series: { field: string; title: string; sort?: string[] }, dash?: { field: string; title: string; scale?: Record<string, unknown> }): TopLevelSpec {
  return {
    title,
    ...CHART_SIZE,
    data: { values: data },
    mark: { type: 'line', point: true },
    encoding: {
      x: quantitative(x),
      y: quantitative(y),
      color: { field: series.field, type: 'nominal', title: series.title, ...(series.sort ? { sort: series.sort } : {}) },
      ...(dash ? { strokeDash: { field: dash.field, type: 'nominal', title: dash.title, ...(dash.scale ? { scale: dash.scale } : {}) } } : {}),
      tooltip: [
        { field: series.field, type: 'nominal', title: series.title },
        { field: x.field, type: 'quantitative', title: x.title },
        { field: y.field, type: 'quantitative', title: y.title, ...(y.as === 'percent' ? { format: '.2%' } : {}) },
      ],
    },
  } as TopLevelSpec;
}

/** A horizontal bar per item: `value` against `category`, categories in the given order. */
export function barChart(title: string, data: Row[], category: { field: string; title: string; sort: string[] }, value: Channel, extraTooltip: Record<string, unknown>[] = []): TopLevelSpec {
  return {
    title,
    width: CHART_SIZE.width,
    height: Math.max(120, 16 * category.sort.length),
    data: { values: data },
    mark: 'bar',
    encoding: {
      y: { field: category.field, type: 'nominal', title: category.title, sort: category.sort, axis: { grid: false } },
      x: quantitative(value),
      tooltip: [{ field: category.field, type: 'nominal', title: category.title }, { field: value.field, type: 'quantitative', title: value.title, ...(value.as === 'percent' ? { format: '.2%' } : {}) }, ...extraTooltip],
    },
  } as TopLevelSpec;
}

/** Formats a fraction as a percentage with two decimals. */
export const percent = (x: number): string => (Number.isFinite(x) ? `${(100 * x).toFixed(2)}%` : '-');
/** Formats a number with `digits` decimals, '-' when unknown. */
export const fixed = (x: number, digits = 3): string => (Number.isFinite(x) ? x.toFixed(digits) : '-');
/** Rounds for chart data (keeps the JSON small and the tooltips readable). */
export const round = (x: number, digits = 6): number | null => (Number.isFinite(x) ? Number(x.toPrecision(digits)) : null);
