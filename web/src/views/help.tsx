import { useEffect, useRef } from "preact/hooks";
import { helpOpen } from "../session";

const KEYS: [string[], string][] = [
  [["j", "→"], "next frame (in the grid and in the frame view)"],
  [["k", "←"], "previous frame"],
  [["↓", "↑"], "next / previous row"],
  [["PageDown", "PageUp"], "four rows down / up"],
  [["Home", "End"], "first / last frame"],
  [["Enter"], "open the frame (or the issue's frame)"],
  [["x"], "select / unselect the frame (grid)"],
  [["s"], "add the selection (grid) or the issue's frame (issues) to a segment"],
  [["n"], "not an issue (issues: it leaves the queue)"],
  [["l", "p"], "lasso / pan tool (map; Shift-drag draws a box)"],
  [["0"], "fit the map"],
  [["Esc"], "close the frame (or this list); clear a selection"],
  [["?"], "show or hide this list"],
];

export function Help() {
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => ref.current?.focus(), []);
  return (
    <div class="backdrop" onClick={(e) => e.target === e.currentTarget && (helpOpen.value = false)}>
      <div class="dialog help" role="dialog" aria-modal="true" aria-labelledby="help-h" tabIndex={-1} ref={ref}>
        <h2 id="help-h">Keyboard</h2>
        <table>
          <tbody>
            {KEYS.map(([keys, what]) => (
              <tr key={what}>
                <th scope="row">
                  {keys.map((x, i) => (
                    <span key={x}>
                      {i > 0 && " "}
                      <kbd>{x}</kbd>
                    </span>
                  ))}
                </th>
                <td>{what}</td>
              </tr>
            ))}
          </tbody>
        </table>
        <button type="button" onClick={() => (helpOpen.value = false)}>
          Close
        </button>
      </div>
    </div>
  );
}
