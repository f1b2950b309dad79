// JSON value → mergekit-style YAML text. The page's recipe state is the JSON tree that the engine's
// YAML parser returns (`parse_recipe`), so unknown keys (slices, filters, gradients, ...) typed in
// the YAML view survive edits made in the form. Parsing YAML is the engine's job (one parser, the
// same one the CLI uses, with line/column errors).

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

const PLAIN = /^[A-Za-z_./][A-Za-z0-9_./+@:-]*$/;
const RESERVED = /^(true|false|yes|no|on|off|null|~|y|n)$/i;

/** A string as a YAML scalar: plain when unambiguous, else double-quoted (JSON escapes are YAML escapes). */
export function yamlString(s: string): string {
  if (PLAIN.test(s) && !RESERVED.test(s) && !/^[-+]?(\d|\.\d)/.test(s) && !s.endsWith(':')) return s;
  return JSON.stringify(s);
}

function scalar(v: Json): string {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') return Number.isFinite(v) ? String(v) : v > 0 ? '.inf' : v < 0 ? '-.inf' : '.nan';
  if (typeof v === 'string') return yamlString(v);
  throw new Error('not a scalar');
}

const isScalar = (v: Json): v is null | boolean | number | string => v === null || typeof v !== 'object';

/** Flow style for short lists of scalars (gradients: `t: [0, 0.5, 1]`). */
function flow(v: Json[]): string {
  return '[' + v.map(scalar).join(', ') + ']';
}

export function toYaml(v: Json, indent = 0): string {
  const pad = ' '.repeat(indent);
  if (isScalar(v)) return pad + scalar(v) + '\n';
  if (Array.isArray(v)) {
    if (v.length === 0) return pad + '[]\n';
    if (v.every(isScalar)) return pad + flow(v) + '\n';
    let out = '';
    for (const item of v) {
      if (isScalar(item) || (Array.isArray(item) && item.every(isScalar))) {
        out += pad + '- ' + (Array.isArray(item) ? flow(item) : scalar(item)) + '\n';
      } else {
        // "- " then the item's block, its first line sharing the dash's line.
        const block = toYaml(item, indent + 2);
        out += pad + '- ' + block.slice(indent + 2);
      }
    }
    return out;
  }
  const entries = Object.entries(v);
  if (entries.length === 0) return pad + '{}\n';
  let out = '';
  for (const [k, val] of entries) {
    const key = yamlString(k);
    if (isScalar(val) || (Array.isArray(val) && (val.length === 0 || val.every(isScalar)))) {
      out += `${pad}${key}: ${Array.isArray(val) ? flow(val) : scalar(val)}\n`;
    } else if (!Array.isArray(val) && Object.keys(val).length === 0) {
      out += `${pad}${key}: {}\n`;
    } else {
      out += `${pad}${key}:\n` + toYaml(val, indent + 2);
    }
  }
  return out;
}
