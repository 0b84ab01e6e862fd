// The left panel: filters (they go to the API) and overlay controls (drawn in the browser).
import { useState } from "preact/hooks";
import type { ClassDef, InferenceSet } from "../api";
import { navigate, withQuery } from "../route";
import { META_OPS, SENSOR_KINDS, type View } from "./view";

interface Props {
  view: View;
  classes: ClassDef[];
  inferenceSets: InferenceSet[];
  latestVersion: number;
  metaKeys: string[];
}

/** Changing a filter is a new history entry (Back undoes it) and starts again at the top. */
const setFilter = (changes: Record<string, string | string[] | null>) => navigate(withQuery({ ...changes, at: null, frame: null, i: null }));
/** Overlay controls only redraw: replace the history entry. */
const setOverlay = (changes: Record<string, string | null>) => navigate(withQuery(changes), { replace: true });

export function Filters({ view, classes, inferenceSets, latestVersion, metaKeys }: Props) {
  const f = view.filter;
  const metas = f.getAll("meta");
  const active = [...f.keys()].length > 0;
  return (
    <aside class="filters" aria-label="filters">
      <h2>Filters</h2>
      <label>
        Class
        <select value={f.get("class") ?? ""} onChange={(e) => setFilter({ class: e.currentTarget.value })} name="class">
          <option value="">any</option>
          {classes.map((c) => (
            <option key={c.id} value={c.name}>
              {c.name}
            </option>
          ))}
        </select>
      </label>
      <fieldset>
        <legend>Labels per frame</legend>
        <div class="row">
          <NumberInput name="min_labels" label="min" value={f.get("min_labels")} />
          <span aria-hidden="true">–</span>
          <NumberInput name="max_labels" label="max" value={f.get("max_labels")} />
        </div>
      </fieldset>
      <label>
        Sensor kind
        <select value={f.get("sensor_kind") ?? ""} onChange={(e) => setFilter({ sensor_kind: e.currentTarget.value })} name="sensor_kind">
          <option value="">any</option>
          {SENSOR_KINDS.map((k) => (
            <option key={k} value={k}>
              {k.replace("_", " ")}
            </option>
          ))}
        </select>
      </label>
      <fieldset>
        <legend>Metadata</legend>
        {metas.map((m, i) => (
          <MetaRow key={i + m} value={m} keys={metaKeys} onChange={(v) => setFilter({ meta: v == null ? metas.filter((_, j) => j !== i) : metas.map((x, j) => (j === i ? v : x)) })} />
        ))}
        <MetaRow key={"new" + metas.length} value="" keys={metaKeys} onChange={(v) => v && setFilter({ meta: [...metas, v] })} isNew />
        <datalist id="meta-keys">
          {metaKeys.map((k) => (
            <option key={k} value={k} />
          ))}
        </datalist>
      </fieldset>
      <label>
        Dataset version
        <input
          type="number"
          name="version"
          min={0}
          max={latestVersion}
          placeholder={`latest (${latestVersion})`}
          value={f.get("version") ?? ""}
          onChange={(e) => setFilter({ version: e.currentTarget.value })}
        />
      </label>
      {active && (
        <button type="button" class="link" onClick={() => setFilter(Object.fromEntries(["class", "meta", "min_labels", "max_labels", "sensor_kind", "version"].map((k) => [k, null])))}>
          Clear filters
        </button>
      )}

      <h2>Overlays</h2>
      <label class="check">
        <input type="checkbox" name="show_labels" checked={view.showLabels} onChange={(e) => setOverlay({ labels: e.currentTarget.checked ? null : "0" })} />
        <span class="line solid" aria-hidden="true" /> Ground truth
      </label>
      <label class="check">
        <input type="checkbox" name="show_inferences" checked={view.showInferences} disabled={inferenceSets.length === 0} onChange={(e) => setOverlay({ inferences: e.currentTarget.checked ? null : "0" })} />
        <span class="line dashed" aria-hidden="true" /> Inferences
      </label>
      {inferenceSets.length > 0 ? (
        <>
          <label>
            Inference set
            <select value={view.inferenceSet ?? ""} name="inference_set" onChange={(e) => navigate(withQuery({ inference_set: e.currentTarget.value }))}>
              {inferenceSets.map((s) => (
                <option key={s.name} value={s.name}>
                  {s.name}
                </option>
              ))}
            </select>
          </label>
          <label>
            <span>
              Confidence ≥ <output>{view.conf.toFixed(2)}</output>
            </span>
            <input type="range" name="conf" min={0} max={1} step={0.01} value={view.conf} onInput={(e) => setOverlay({ conf: e.currentTarget.value === "0.5" ? null : e.currentTarget.value })} />
          </label>
        </>
      ) : (
        <p class="muted">No inference sets on this dataset.</p>
      )}
      <h2>Classes</h2>
      <ul class="legend">
        {classes.map((c) => (
          <li key={c.id}>
            <span class="swatch" style={{ background: `rgb(${c.color.join(",")})` }} /> {c.name}
          </li>
        ))}
      </ul>
    </aside>
  );
}

function NumberInput({ name, label, value }: { name: string; label: string; value: string | null }) {
  return (
    <input type="number" min={0} name={name} aria-label={`${label} labels`} placeholder={label} value={value ?? ""} onChange={(e) => setFilter({ [name]: e.currentTarget.value })} />
  );
}

/** One `KEY:OP:VALUE` condition. Applied when complete (on change, i.e. Enter or leaving the field). */
function MetaRow({ value, keys, onChange, isNew = false }: { value: string; keys: string[]; onChange: (v: string | null) => void; isNew?: boolean }) {
  const [k0, op0, ...rest] = value ? value.split(":") : ["", "eq"];
  const [key, setKey] = useState(k0);
  const [op, setOp] = useState(op0 || "eq");
  const [val, setVal] = useState(rest.join(":"));
  const commit = (k = key, o = op, v = val) => {
    if (!k) return;
    if (o !== "exists" && v === "" && isNew) return;
    onChange(`${k}:${o}:${o === "exists" ? "" : v}`);
  };
  return (
    <div class="meta-row">
      <input list="meta-keys" aria-label="metadata key" placeholder="key" name="meta_key" value={key} onInput={(e) => setKey(e.currentTarget.value)} onChange={(e) => commit(e.currentTarget.value)} size={8} />
      <select aria-label="operator" name="meta_op" value={op} onChange={(e) => { setOp(e.currentTarget.value); commit(key, e.currentTarget.value); }}>
        {META_OPS.map((o) => (
          <option key={o} value={o}>
            {o}
          </option>
        ))}
      </select>
      <input aria-label="value" placeholder={op === "exists" ? "" : "value"} name="meta_value" disabled={op === "exists"} value={val} onInput={(e) => setVal(e.currentTarget.value)} onChange={(e) => commit(key, op, e.currentTarget.value)} size={6} />
      {!isNew && (
        <button type="button" class="icon" aria-label="remove condition" onClick={() => onChange(null)}>
          ✕
        </button>
      )}
    </div>
  );
}
