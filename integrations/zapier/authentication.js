// The connection is the Stencil project's API key; the relay says which project it belongs to.
const BASE_URL = process.env.RELAY_URL || 'https://stencil-relay.example.com';

module.exports = {
  type: 'custom',
  fields: [{ key: 'apiKey', label: 'API Key', required: true, type: 'password' }],
  test: (z, bundle) =>
    z.request({ method: 'GET', url: `${BASE_URL}/v1/connection` }).then((response) => response.data),
  connectionLabel: '{{json.name}}',
  BASE_URL,
};
