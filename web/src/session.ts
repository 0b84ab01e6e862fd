import { signal } from "@preact/signals";

export interface Me {
  name: string;
  role: string;
}
/** Who is signed in (from /api/whoami); null while unknown. */
export const me = signal<Me | null>(null);
/** The keyboard help dialog. */
export const helpOpen = signal(false);
