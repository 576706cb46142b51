"""Real wars for the tests, compiled with the host's javac against Debian's servlet API jars.

A Jakarta one (``libjakarta-servlet-api-java``: ``jakarta.servlet``), which Tomcat 10 runs, and
a Java EE one (``libservlet-api-java``: ``javax.servlet``), which it cannot. Each has a servlet
answering ``/hello``, a static ``index.html`` and a JSP, ``answer.jsp``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

API_JARS = {"jakarta": Path("/usr/share/java/jakarta-servlet-api.jar"),
            "javax": Path("/usr/share/java/servlet-api.jar")}
INDEX = "<html><body>static index of the war</body></html>\n"
#: Compiled in the guest by Jasper with Debian's Eclipse compiler.
JSP = "<%@ page contentType=\"text/plain\" %>six times seven is <%= 6 * 7 %>\n"

SERVLET = """\
package com.example.web;

import {api}.servlet.annotation.WebServlet;
import {api}.servlet.http.HttpServlet;
import {api}.servlet.http.HttpServletRequest;
import {api}.servlet.http.HttpServletResponse;
import java.io.IOException;

@WebServlet("/hello")
public class Hello extends HttpServlet {{
    @Override
    protected void doGet(HttpServletRequest request, HttpServletResponse response)
            throws IOException {{
        response.setContentType("text/plain");
        response.getWriter().print("hello from a war on " + getServletContext().getServerInfo()
                + " at [" + request.getContextPath() + "]");
    }}
}}
"""


def build_war(dest: Path, api: str = "jakarta") -> Path:
    """``dest`` (a .war) holding the servlet compiled against the ``api`` jar and index.html."""
    jar = API_JARS[api]
    if shutil.which("javac") is None or not jar.exists():
        pytest.skip(f"javac and {jar} are needed (scripts/setup.sh installs them)")
    work = dest.parent / f"{dest.stem}-build"
    src = work / "src/com/example/web/Hello.java"
    src.parent.mkdir(parents=True)
    src.write_text(SERVLET.format(api=api))
    classes = work / "classes"
    subprocess.run(["javac", "--release", "17", "-cp", str(jar), "-d", str(classes), str(src)],
                   check=True, capture_output=True)
    staging = work / "war"
    shutil.copytree(classes, staging / "WEB-INF/classes")
    (staging / "index.html").write_text(INDEX)
    (staging / "answer.jsp").write_text(JSP)
    # The jar tool, as build tools do: directory entries, a manifest.
    subprocess.run(["jar", "--create", "--file", str(dest), "-C", str(staging), "."], check=True,
                   capture_output=True)
    return dest
