"""The build: a config in, an image in the store out.

:mod:`.packages` resolves which Debian packages the image is made of (the JDK, the kernel, the
drivers, the app's native libraries and packages, Tomcat for a war) and pins them in the lock;
:mod:`.plan` runs the pipeline's stages in order (fetch, read the app, make the kernel, base, jvm,
packages, libs, app and aot layers, the cached disk), each keyed by the hash of its inputs and
cached, and commits the image to the store.
"""
