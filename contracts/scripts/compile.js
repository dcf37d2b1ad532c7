// Compile Hearth's contracts with the pinned solcjs (node_modules/solc).
//
// Reads a solc standard-JSON input on stdin (sources given by content, with source
// unit names like "src/PaymentHub.sol"), resolves "@openzeppelin/..." imports from
// node_modules, and prints solc's standard-JSON output on stdout. The Python side
// (python -m market.chain.compile) builds the input and writes the artifacts.
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const root = path.resolve(__dirname, "..");

function findImports(unitName) {
  const candidates = [path.join(root, "node_modules", unitName), path.join(root, unitName)];
  for (const file of candidates) {
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, "utf8") };
  }
  return { error: "File not found: " + unitName };
}

const input = fs.readFileSync(0, "utf8");
const output = solc.compile(input, { import: findImports });
process.stdout.write(JSON.stringify({ solcVersion: solc.version(), output: JSON.parse(output) }));
