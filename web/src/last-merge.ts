// The output of the last merge done in the Merge tab, for the Generate tab ("the merge just
// made", loaded without a round trip through disk). main.ts calls `setLastMerge` when a merge
// finishes; generate.ts reads it and listens for changes.

export type MergedFile = { name: string; blob: Blob };

let last: { files: MergedFile[]; at: number } | null = null;
const target = new EventTarget();

export function setLastMerge(files: MergedFile[]): void {
  last = { files, at: Date.now() };
  target.dispatchEvent(new Event('change'));
}

export function getLastMerge(): { files: MergedFile[]; at: number } | null {
  return last;
}

export function onLastMergeChange(f: () => void): void {
  target.addEventListener('change', f);
}
