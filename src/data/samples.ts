import { loadDataset } from './datasets.js';

/** A few test images for a page, as JSON: 8-bit HWC pixels in base64, one string per image. */
export interface SampleImages {
  width: number;
  height: number;
  channels: number;
  classNames: string[];
  labels: number[];
  images: string[];
}

/** The first `count` test images of a data set, for the pages that run a model on them (the demo, the split head). */
export async function sampleImages(dataset: string, o: { dataDir?: string; count: number }): Promise<SampleImages> {
  const data = await loadDataset(dataset, { dataDir: o.dataDir, trainLimit: 1, testLimit: o.count });
  const t = data.test;
  const per = t.height * t.width * t.channels;
  const images = Array.from({ length: t.count }, (_, i) => Buffer.from(t.images.subarray(i * per, (i + 1) * per)).toString('base64'));
  return { width: t.width, height: t.height, channels: t.channels, classNames: data.classNames, labels: Array.from(t.labels), images };
}
