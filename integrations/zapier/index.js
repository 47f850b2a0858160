const authentication = require('./authentication');
const newImage = require('./triggers/new_image');

// Every request carries the connection's API key; a refused key or a relay error is shown to the
// user with the relay's own message.
const addApiKey = (request, z, bundle) => {
  request.headers.Authorization = `Bearer ${bundle.authData.apiKey}`;
  return request;
};

const raiseRelayErrors = (response, z) => {
  if (response.status === 401) {
    throw new z.errors.RefreshAuthError('The relay refused the API key. Reconnect with a valid key.');
  }
  if (response.status >= 400) {
    let message = `The relay answered ${response.status}`;
    try {
      message = JSON.parse(response.content).message || message;
    } catch (e) {
      // not JSON: keep the status line
    }
    if (response.status === 429) {
      throw new z.errors.ThrottledError(message, Number(response.getHeader('retry-after')) || 60);
    }
    throw new z.errors.Error(message, 'RelayError', response.status);
  }
  return response;
};

module.exports = {
  version: require('./package.json').version,
  platformVersion: require('zapier-platform-core').version,
  authentication,
  beforeRequest: [addApiKey],
  afterResponse: [raiseRelayErrors],
  triggers: {
    [newImage.key]: newImage,
  },
};
