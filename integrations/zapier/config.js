// Where the relay is. A private Zapier integration is pushed by whoever runs the relay, who sets
// it once for the app version: `zapier env:set 1.0.0 RELAY_URL=https://relay.example.com`.
// Read at call time, so tests (and `zapier invoke`) can point it at a local relay.
const baseUrl = () => (process.env.RELAY_URL || 'https://stencil-relay.example.com').replace(/\/+$/, '');

module.exports = { baseUrl };
