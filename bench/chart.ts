/**
 * Draws the run's ratios as one SVG bar chart (no dependencies): one bar per ratio, on a log scale centred on
 * parity, oriented so that a bar to the right always means Halcyon is better (faster, leaner, sooner).
 * @module
 */
import type { Contender, RatioEntry } from './report.ts';

const COLORS: Record<Contender, string> = {
  floor: '#6b7280',
  raw: '#6b7280',
  'matrix-bot-sdk': '#2563eb',
  'matrix-js-sdk': '#d97706',
  halcyon: '#059669',
};

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Halcyon's advantage for a ratio: >1 is better for Halcyon whichever direction the metric runs. */
export function advantage(r: RatioEntry): number {
  return r.better === 'higher' ? r.ofMedians : 1 / r.ofMedians;
}

/** Renders the ratios (finite ones only) as an SVG document; `subtitle` names the machine and date. */
export function ratioChart(ratios: readonly RatioEntry[], subtitle: string): string {
  const rows = ratios.filter((r) => Number.isFinite(r.ofMedians) && r.ofMedians > 0);
  const rowH = 22;
  const labelW = 430;
  const plotW = 460;
  const top = 64;
  const height = top + rows.length * rowH + 56;
  const width = labelW + plotW + 110;
  // Log scale, symmetric around 1, wide enough for the largest advantage (at least ×4 either way, at most ×64:
  // longer bars are cut at the edge; the number beside each bar is the exact ratio).
  const extent = Math.min(6, Math.max(2, ...rows.map((r) => Math.abs(Math.log2(advantage(r)))))) * 1.05;
  const x = (adv: number): number => labelW + plotW / 2 + (Math.max(-extent, Math.min(extent, Math.log2(adv))) / extent) * (plotW / 2);
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="12">`);
  out.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  out.push(`<text x="12" y="22" font-size="15" font-weight="600">Halcyon against the floor and the peers (bars to the right: Halcyon better)</text>`);
  out.push(`<text x="12" y="42" fill="#374151">${esc(subtitle)}</text>`);
  // Grid lines at powers of two.
  const step = extent > 4.5 ? 2 : 1;
  for (let e = -Math.floor(extent / step) * step; e <= Math.floor(extent); e += step) {
    const gx = x(2 ** e);
    out.push(`<line x1="${gx}" y1="${top - 6}" x2="${gx}" y2="${top + rows.length * rowH}" stroke="${e === 0 ? '#111827' : '#e5e7eb'}" stroke-width="${e === 0 ? 1.5 : 1}"/>`);
    out.push(`<text x="${gx}" y="${top + rows.length * rowH + 16}" text-anchor="middle" fill="#6b7280">${e >= 0 ? `×${2 ** e}` : `×1/${2 ** -e}`}</text>`);
  }
  let lastWorkload = '';
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    const adv = advantage(r);
    const x0 = x(1);
    const x1 = x(adv);
    if (r.workload !== lastWorkload && i > 0) out.push(`<line x1="8" y1="${y}" x2="${width - 8}" y2="${y}" stroke="#d1d5db" stroke-dasharray="3 3"/>`);
    lastWorkload = r.workload;
    const label = `${r.workload}: ${r.metric} ÷ ${r.versus}`;
    out.push(`<text x="${labelW - 8}" y="${y + 15}" text-anchor="end">${esc(label.length > 70 ? label.slice(0, 69) + '…' : label)}</text>`);
    out.push(`<rect x="${Math.min(x0, x1)}" y="${y + 4}" width="${Math.max(1, Math.abs(x1 - x0))}" height="${rowH - 8}" fill="${COLORS[r.versus]}" opacity="${adv >= 1 ? 0.9 : 0.55}"/>`);
    const tag = `×${r.ofMedians >= 10 ? r.ofMedians.toFixed(0) : r.ofMedians.toFixed(2)}`;
    out.push(`<text x="${labelW + plotW + 8}" y="${y + 15}" fill="${adv >= 1 ? '#065f46' : '#991b1b'}">${tag}${r.better === 'lower' ? ' (lower is better)' : ''}</text>`);
  });
  const ly = top + rows.length * rowH + 38;
  let lx = 12;
  for (const c of ['floor', 'matrix-bot-sdk', 'matrix-js-sdk'] as const) {
    out.push(`<rect x="${lx}" y="${ly - 10}" width="12" height="12" fill="${COLORS[c]}"/>`);
    const name = c === 'floor' ? 'floor / raw loop' : c;
    out.push(`<text x="${lx + 16}" y="${ly}">÷ ${name}</text>`);
    lx += 150;
  }
  out.push(`<text x="${lx}" y="${ly}" fill="#6b7280">numbers: the ratio Halcyon ÷ contender, medians over the rounds</text>`);
  out.push('</svg>');
  return out.join('\n') + '\n';
}
