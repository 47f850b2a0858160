const authentication = require('./authentication');
const newImage = require('./triggers/new_image');

module.exports = {
  version: require('./package.json').version,
  platformVersion: require('zapier-platform-core').version,
  authentication,
  beforeRequest: [
    (request, z, bundle) => {
      request.headers.Authorization = `Bearer ${bundle.authData.apiKey}`;
      return request;
    },
  ],
  triggers: {
    [newImage.key]: newImage,
  },
};
