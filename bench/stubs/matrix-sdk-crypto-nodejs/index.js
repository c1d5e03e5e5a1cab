// matrix-bot-sdk requires this package when it loads, but only touches its exports once encryption is turned on,
// which the benchmarks never do. Reading any export throws, so an accidental use fails loudly.
'use strict';
module.exports = new Proxy(
  {},
  {
    get(_target, name) {
      // Module machinery probes these (ESM interop, promise checks, inspection); they are not crypto use.
      if (typeof name === 'symbol' || name === '__esModule' || name === 'then' || name === 'default') return undefined;
      throw new Error(`@matrix-org/matrix-sdk-crypto-nodejs is a stub in the benchmarks (no native binary): ${String(name)} is unavailable`);
    },
  },
);
