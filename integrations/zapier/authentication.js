// The connection is the Stencil project's API key; the relay says which project it belongs to.
const { baseUrl } = require('./config');

module.exports = {
  type: 'custom',
  fields: [
    {
      key: 'apiKey',
      label: 'API Key',
      required: true,
      type: 'password',
      helpText: 'The API key of your stencil-relay connection (one Stencil project).',
    },
  ],
  test: (z) => z.request({ method: 'GET', url: `${baseUrl()}/v1/connection` }).then((response) => response.data),
  // Fields the test returns are in bundle.inputData: the relay's name of the connection.
  connectionLabel: '{{bundle.inputData.name}}',
};
