// Applies the repository's packageRules (renovate.json with its presets resolved) to every
// dependency of a Renovate extract report, with Renovate's own code (config/presets
// resolveConfigPresets, util/package-rules applyPackageRules), and prints, per dependency,
// whether Renovate would look it up and in which group.
//
// usage: node renovate_rules.mjs RENOVATE_DIST renovate.json report.json
import { readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [dist, configPath, reportPath] = process.argv.slice(2);
const load = (p) => import(pathToFileURL(path.join(dist, p)).href);
const { resolveConfigPresets } = await load("config/presets/index.js");
const { applyPackageRules } = await load("util/package-rules/index.js");

const { config } = await resolveConfigPresets(JSON.parse(readFileSync(configPath, "utf8")));
const report = JSON.parse(readFileSync(reportPath, "utf8"));
const out = [];
for (const repo of Object.values(report.repositories)) {
  for (const [manager, files] of Object.entries(repo.packageFiles ?? {})) {
    for (const file of files) {
      for (const dep of file.deps) {
        const applied = await applyPackageRules({ ...config, ...dep, manager, packageFile: file.packageFile }, "lookup");
        out.push({
          manager,
          packageFile: file.packageFile,
          depName: dep.depName ?? null,
          datasource: dep.datasource ?? null,
          currentValue: dep.currentValue ?? null,
          enabled: applied.enabled !== false,
          groupName: applied.groupName ?? null,
        });
      }
    }
  }
}
process.stdout.write(JSON.stringify(out));
