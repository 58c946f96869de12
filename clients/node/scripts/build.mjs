// Compiles src/ twice, to ESM (dist/esm) and CommonJS (dist/cjs), each with its declarations, and marks
// each folder's module format so `import` and `require` both load the right one.
import { execFileSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";

const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
rmSync("dist", { recursive: true, force: true });
for (const [project, type] of [["tsconfig.json", "module"], ["tsconfig.cjs.json", "commonjs"]]) {
  execFileSync(process.execPath, [tsc, "-p", project], { stdio: "inherit" });
  writeFileSync(`dist/${type === "module" ? "esm" : "cjs"}/package.json`, JSON.stringify({ type }) + "\n");
}
