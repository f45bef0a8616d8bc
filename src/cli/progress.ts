import cliProgress from 'cli-progress';
import type { Io } from './io.js';
import type { StepProgress } from '../train/trainer.js';
import type { EpochRecord } from '../train/run.js';

/** Training progress: a bar per epoch on a terminal, one line per epoch otherwise. */
export function trainingProgress(io: Io, executed = 'blocks executed') {
  let bar: cliProgress.SingleBar | null = null;
  return {
    onStep(p: StepProgress) {
      if (!io.errIsTTY) return;
      if (!bar) {
        bar = new cliProgress.SingleBar(
          {
            format: `epoch ${p.epoch + 1}/${p.epochs} [{bar}] {value}/{total} loss {loss} acc {acc} {sps} samples/s u {u}`,
            stream: process.stderr,
            hideCursor: true,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(p.steps, 0, { loss: '-', acc: '-', sps: '-', u: '-' });
      }
      bar.update(p.step + 1, {
        loss: p.loss.toFixed(4),
        acc: (100 * p.accuracy).toFixed(1) + '%',
        sps: p.samplesPerSec.toFixed(0),
        u: p.u.toFixed(2),
      });
    },
    onEpoch(r: EpochRecord) {
      if (bar) {
        bar.stop();
        bar = null;
      }
      const test = [
        ...Object.entries(r.testAccuracy).map(([u, a]) => `u=${u}: ${(100 * a).toFixed(2)}%`),
        ...(r.gated ? [`gated: ${(100 * r.gated.accuracy).toFixed(2)}% at FLOPs ratio ${r.gated.flopsRatio.toFixed(3)}`] : []),
        ...(r.gated?.expertCv !== undefined ? [`expert load CV ${r.gated.expertCv.toFixed(3)}, overflow ${pctOf(r.gated.overflowRate)} (training ${pctOf(r.gated.trainOverflowRate)})`] : []),
        ...(r.gated?.trainExecutionRate !== undefined ? [`${executed} ${r.gated.executionRate?.toFixed(3)} (training ${r.gated.trainExecutionRate.toFixed(3)})`] : []),
      ].join(', ');
      io.err(
        `epoch ${r.epoch}: loss ${r.loss.toFixed(4)}, train acc ${(100 * r.trainAccuracy).toFixed(2)}%, ` +
          `${r.samplesPerSec.toFixed(0)} samples/s, ${r.msPerStep.toFixed(0)} ms/step; test ${test}\n`,
      );
    },
    stop() {
      bar?.stop();
    },
  };
}

/** A share as a percentage with one decimal, or "-" when absent. */
function pctOf(x: number | undefined): string {
  return x === undefined ? '-' : `${(100 * x).toFixed(1)}%`;
}
